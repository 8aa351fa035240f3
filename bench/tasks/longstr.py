"""Long responses (issue 25): copy, reverse or sort a long random string.

Why: mismatch costs grow with response length (per-sequence IS ratios are products over tokens;
Jet-RL, arXiv 2601.14243, sees BF16-train + FP8-rollout degrade with length), and the tasks before
this one answer in 3-6 tokens. Here the response length is a knob, `length` characters (16 to
well past 512), and the work per token is the same at every length, so length is the only axis
that moves.

    'abcab:r>' -> 'bacba'     (op=reverse; 'c' copy -> 'abcab', 's' sort -> 'aabbc')

The alphabet is the first `alphabet` lowercase letters: a small one keeps the tiny model's task
learnable from a short warm-up on CPU. Two scores per completion (both logged, see `scores`):
  exact    1.0 when the completion equals the answer, else 0.0 (eval/<task>/accuracy)
  partial  (positions i < min(len(c), len(a)) with c_i == a_i) / max(len(c), len(a)) — dense,
           so a 512-token answer with one wrong character scores 511/512, not 0
(`eval/<task>/partial`). `score` picks which one GRPO trains on (default partial: at 512
tokens exact match is almost never reached by sampling and would give no signal).
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass

from bench.tasks.base import Problem, Task

OPS = {"copy": "c", "reverse": "r", "sort": "s"}
REWARDS = ("exact", "partial")


@dataclass
class LongStrConfig:
    """task=longstr (the one place these defaults live; bench/config/schema.py registers it)."""
    name: str = "longstr"
    op: str = "reverse"        # copy | reverse | sort
    length: int = 32           # response length in characters (= tokens with the character tokenizer)
    alphabet: int = 4          # letters a.. used (2..26)
    score: str = "partial"     # exact | partial: the score GRPO trains on (its reward)
    loss_on: str = "answer"


def partial_score(completion: str, answer: str) -> float:
    """Fraction of aligned positions that match, over the longer of the two strings."""
    n = max(len(completion), len(answer))
    if n == 0:
        return 1.0
    return sum(a == b for a, b in zip(completion, answer)) / n


class LongStr(Task):
    name = "longstr"
    Config = LongStrConfig

    def __init__(self, op: str, length: int, alphabet: int, score: str, loss_on: str, tokenizer=None):
        super().__init__(loss_on, tokenizer)
        if op not in OPS:
            raise ValueError(f"task.op={op!r}; valid: {', '.join(OPS)}")
        if length <= 0:
            raise ValueError(f"task.length={length} must be positive")
        if not 2 <= alphabet <= 26:
            raise ValueError(f"task.alphabet={alphabet}; valid: 2..26")
        if score not in REWARDS:
            raise ValueError(f"task.score={score!r}; valid: {', '.join(REWARDS)}")
        self.op, self.length, self.alphabet, self.score = op, length, alphabet, score

    def sample(self, rng: random.Random) -> Problem:
        letters = string.ascii_lowercase[:self.alphabet]
        s = "".join(rng.choice(letters) for _ in range(self.length))
        ans = {"copy": s, "reverse": s[::-1], "sort": "".join(sorted(s))}[self.op]
        return Problem(f"{s}:{OPS[self.op]}>", ans)

    def char_prompt_len(self) -> int:
        return 1 + self.length + 3

    def char_seq_len(self) -> int:
        return self.char_prompt_len() + self.length + 1

    def scores(self, p: Problem, completion: str) -> dict[str, float]:
        """Both scores of one completion, by name (eval logs each as eval/<task>/<name>)."""
        c = completion.strip()
        return {"exact": float(c == p.answer), "partial": partial_score(c, p.answer)}

    def reward(self, p: Problem, completion: str) -> float:
        return self.scores(p, completion)[self.score]

    def accuracy(self, p: Problem, completion: str) -> float:
        """Held-out accuracy is exact match whatever the training reward."""
        return self.scores(p, completion)["exact"]
