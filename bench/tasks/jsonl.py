"""task=jsonl: a user's own prompts, one {"prompt": str, "answer": str} object per line.

    python -m recipes.grpo task=jsonl task.path=problems.jsonl task.verifier=numeric ...

The answer is what the model is trained to continue the prompt with in the supervised warm start
and what the verifier (bench/tasks/verifiers.py: exact, numeric, math) scores a completion
against in GRPO and eval. `task.path` may also name a Hugging Face `datasets` directory written
by `Dataset.save_to_disk` (read only where `datasets` is installed; it is not a dependency).
With model=hf and model.chat_template=true each prompt becomes the user turn of the tokenizer's
chat template (bench/tasks/hf_tokenizer.py).

Held-out split: a row is eval iff a hash of its prompt lands in the `eval_fraction` bucket (the
base class's split), so a repeated prompt never sits on both sides. Train batches draw rows with
replacement, a pure function of the seed (resume needs no loader state); eval takes the eval rows
in file order, at most as many as asked for.

Every row is checked once, when the task is built (the validation pass): the first bad row is
one line naming file:line and what is wrong, with the count of further bad rows.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from bench.tasks.base import Problem, Task
from bench.tasks.verifiers import check_answer, check_verifier, score

_FORMAT = 'valid: one JSON object {"prompt": str, "answer": str} per line'


@dataclass
class JsonlConfig:
    """task=jsonl (the one place these defaults live); `path` is required."""
    name: str = "jsonl"
    path: str = MISSING
    verifier: str = "exact"       # exact | numeric | math (bench/tasks/verifiers.py)
    eval_fraction: float = 0.1    # share of prompts (by hash) held out for eval
    loss_on: str = "answer"


def _read_rows(path: str) -> list[tuple[str, object]]:
    """(location, decoded row or the JSON error) for every non-blank line or dataset record."""
    p = Path(path)
    if p.is_dir():
        try:
            import datasets
        except ImportError:
            raise ValueError(f"task.path={path!r} is a directory (a datasets save_to_disk dir?) but the "
                             f"`datasets` package is not installed; valid: a .jsonl file, or pip install datasets") from None
        return [(f"{path}[{i}]", dict(r)) for i, r in enumerate(datasets.load_from_disk(path))]
    if not p.is_file():
        raise ValueError(f"task.path={path!r} is not a readable file; {_FORMAT}")
    rows = []
    with open(p, encoding="utf-8", errors="strict") as f:
        try:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append((f"{path}:{n}", json.loads(line)))
                    except json.JSONDecodeError as e:
                        rows.append((f"{path}:{n}", e))
        except UnicodeDecodeError:
            raise ValueError(f"task.path={path!r}: line {len(rows) + 1} or near it is not UTF-8; {_FORMAT}") from None
    return rows


def _problem(row, verifier: str, tok) -> Problem | str:
    """The row as a Problem, or why it is bad."""
    if isinstance(row, json.JSONDecodeError):
        return f"not JSON ({row.msg})"
    if not isinstance(row, dict) or "prompt" not in row or "answer" not in row:
        return "needs the keys \"prompt\" and \"answer\""
    prompt, answer = row["prompt"], row["answer"]
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)  # {"answer": 18} is as good as {"answer": "18"}
    if not isinstance(prompt, str) or not prompt.strip():
        return "\"prompt\" must be a non-empty string"
    if not isinstance(answer, str) or not answer.strip():
        return "\"answer\" must be a non-empty string or a number"
    if tok.exact_width:  # the character tokenizer maps printable ASCII only
        bad = next((c for c in prompt + answer if not (" " <= c <= "~")), None)
        if bad is not None:
            return f"character {bad!r} is outside the character tokenizer's printable ASCII (valid: model=hf for other text)"
    why = check_answer(verifier, answer)
    return why if why else Problem(prompt, answer)


def write_example(path: str, rows: int, seed: int) -> None:
    """A small file to try task=jsonl on: sums of two numbers below 50, "A+B=" -> "A+B's value"
    (a task the tiny model learns from its warm start on 2 cores)."""
    rng = random.Random(seed)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for _ in range(rows):
            a, b = rng.randint(0, 49), rng.randint(0, 49)
            f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")


class Jsonl(Task):
    name = "jsonl"
    Config = JsonlConfig

    def __init__(self, path: str, verifier: str, eval_fraction: float, loss_on: str, tokenizer=None):
        super().__init__(loss_on, tokenizer)
        if path in ("", MISSING, None):
            raise ValueError(f"task=jsonl needs task.path=FILE; none given; {_FORMAT}")
        if not 0 < eval_fraction < 1:
            raise ValueError(f"task.eval_fraction={eval_fraction}; valid: a fraction in (0, 1)")
        check_verifier(verifier)
        self.path, self.verifier, self.eval_fraction = str(path), verifier, float(eval_fraction)
        probs, bad = [], []
        for where, row in _read_rows(self.path):
            got = _problem(row, verifier, self.tok)
            (bad.append(f"{where}: {got}") if isinstance(got, str) else probs.append(got))
        if bad:
            more = f" (and {len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
            raise ValueError(f"{bad[0]}{more}; {_FORMAT}")
        # The file's content is part of the task's identity: the warm-start cache keys on it.
        self.digest = hashlib.sha256("\n".join(f"{p.prompt}\0{p.answer}" for p in probs).encode()).hexdigest()[:16]
        self._split = {"train": [p for p in probs if not self.is_eval(p)], "eval": [p for p in probs if self.is_eval(p)]}
        for split, rows in self._split.items():
            if not rows:
                raise ValueError(f"task.path={self.path!r}: {len(probs)} rows leave the {split} split empty at "
                                 f"task.eval_fraction={eval_fraction}; valid: more rows or another eval_fraction")

    def problems(self, split: str, n: int, seed: int) -> list[Problem]:
        rows = self._split[split]
        if split == "eval":
            return rows[:n]
        rng = random.Random(seed)
        return [rng.choice(rows) for _ in range(n)]

    def reward(self, p: Problem, completion: str) -> float:
        return score(self.verifier, p.answer, completion)

    # --- widths: exact over every row --------------------------------------------------------
    def _rows(self) -> list[Problem]:
        return self._split["train"] + self._split["eval"]

    def char_prompt_len(self) -> int:
        return 1 + max(len(p.prompt) for p in self._rows())

    def char_seq_len(self) -> int:
        return self.char_prompt_len() + max(len(p.answer) for p in self._rows()) + 1

    def _measured(self) -> tuple[int, int]:
        if self._widths is None:
            rows = self._rows()
            self._widths = (2 + max(len(self.tok.encode_prompt(p.prompt)) for p in rows),
                            1 + max(len(self.tok.encode(p.answer)) for p in rows))
        return self._widths
