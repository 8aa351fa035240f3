"""What a task is: seeded (prompt, answer) problems, LM batches, and an exact-match reward.

Problems are generated on the fly from integer seeds, so nothing is downloaded and the batch at
step k is a pure function of (seed, k): resume needs no data-loader state. Train and eval splits
are disjoint by construction: a problem belongs to eval iff a hash of its prompt lands in the
eval bucket, and the train sampler rejects eval problems.

Prompts are left-padded to the task's fixed width `prompt_len`, so a batch of prompts is a dense
[B, P] tensor with the answer starting at P for every row. With the character tokenizer the
addition and reversal prompts are exactly that wide (no padding at all); word problems (arith) and
Hugging Face tokenizers pad. Widths are exact for the character tokenizer (subclasses state them,
`char_prompt_len`/`char_seq_len`); for an HF tokenizer they are measured once on 512 problems of
each split (+2 tokens of slack), and a longer prompt still fits: a batch is as wide as its
longest prompt.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import torch

from bench.tasks.tokenizer import CHAR


@dataclass
class Problem:
    prompt: str
    answer: str


class Task:
    """A subclass names its config dataclass `Config` (its knobs and their one set of defaults);
    `bench.tasks.build_task` fills a partial mapping from it and passes every field but `name`."""
    name: str = "task"
    Config: type = None
    eval_fraction: float = 0.1

    def __init__(self, loss_on: str, tokenizer=None):
        if loss_on not in ("answer", "all"):
            raise ValueError(f"task.loss_on={loss_on!r}; valid: answer, all")
        self.loss_on = loss_on
        self.tok = tokenizer or CHAR
        self._widths: tuple[int, int] | None = None

    @property
    def eos_id(self) -> int:
        return self.tok.eos_id

    # --- subclasses implement -------------------------------------------------------------
    def sample(self, rng: random.Random) -> Problem:
        raise NotImplementedError

    def char_seq_len(self) -> int:
        """BOS + prompt + answer + EOS, the widest problem, in characters."""
        raise NotImplementedError

    def char_prompt_len(self) -> int:
        """BOS + prompt, the widest problem, in characters."""
        raise NotImplementedError

    @property
    def seq_len(self) -> int:
        """Tokens of the widest prompt + answer + EOS (what the model's context must hold)."""
        return self.char_seq_len() if self.tok.exact_width else sum(self._measured())

    @property
    def prompt_len(self) -> int:
        """Tokens of a (left-padded) prompt: where every answer starts."""
        return self.char_prompt_len() if self.tok.exact_width else self._measured()[0]

    def _measured(self) -> tuple[int, int]:
        """(prompt width, answer + EOS width) under a non-character tokenizer, from 512 problems
        of each split, with 2 tokens of slack on the prompt (cached)."""
        if self._widths is None:
            probs = self.problems("train", 512, 12_345) + self.problems("eval", 512, 12_345)
            self._widths = (2 + max(len(self.tok.encode_prompt(p.prompt)) for p in probs),
                            1 + max(len(self.tok.encode(p.answer)) for p in probs))
        return self._widths

    # --- shared machinery -----------------------------------------------------------------
    def is_eval(self, p: Problem) -> bool:
        h = int.from_bytes(hashlib.blake2b(p.prompt.encode(), digest_size=8).digest(), "little")
        return (h % 1000) < self.eval_fraction * 1000

    def problems(self, split: str, n: int, seed: int) -> list[Problem]:
        """n problems of `split` ('train'|'eval'), a pure function of (seed, n)."""
        rng, want_eval, out = random.Random(seed), split == "eval", []
        while len(out) < n:
            p = self.sample(rng)
            if self.is_eval(p) == want_eval:
                out.append(p)
        return out

    def reward(self, p: Problem, completion: str) -> float:
        """Exact match: 1.0 when the decoded completion equals the answer, else 0.0."""
        return float(completion.strip() == p.answer)

    def _prompt_rows(self, probs: list[Problem]) -> tuple[list[list[int]], int]:
        """Left-padded prompt ids, all of width P = max(prompt_len, longest prompt)."""
        rows = [self.tok.encode_prompt(p.prompt) for p in probs]
        width = max([self.prompt_len] + [len(r) for r in rows])
        return [[self.tok.pad_id] * (width - len(r)) + r for r in rows], width

    def encode_prompts(self, probs: list[Problem]) -> torch.Tensor:
        return torch.tensor(self._prompt_rows(probs)[0], dtype=torch.long)

    def lm_batch(self, split: str, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs [B,T], targets [B,T], loss_mask [B,T]) for next-token prediction: left-padded
        prompt, answer, EOS, right padding. The mask comes from lengths (pad may equal EOS): the
        answer tokens and EOS (loss_on=answer) or every real token after the first (all)."""
        probs = self.problems(split, batch_size, seed)
        prompts, P = self._prompt_rows(probs)
        seqs = [r + self.tok.encode(p.answer) + [self.tok.eos_id] for r, p in zip(prompts, probs)]
        width = max(len(s) for s in seqs)
        toks = torch.full((len(seqs), width), self.tok.pad_id, dtype=torch.long)
        mask = torch.zeros(len(seqs), width - 1, dtype=torch.bool)
        for i, (s, p) in enumerate(zip(seqs, prompts)):
            toks[i, :len(s)] = torch.tensor(s)
            first = P - 1 if self.loss_on == "answer" else P - len(self.tok.encode_prompt(probs[i].prompt))
            mask[i, first:len(s) - 1] = True  # target t+1 for t in [first, len-2]
        return toks[:, :-1], toks[:, 1:], mask

    def completion_text(self, ids) -> str:
        return self.tok.decode(ids)
