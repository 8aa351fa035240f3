"""What a task is: seeded (prompt, answer) problems, LM batches, and an exact-match reward.

Problems are generated on the fly from integer seeds, so nothing is downloaded and the batch at
step k is a pure function of (seed, k): resume needs no data-loader state. Train and eval splits
are disjoint by construction: a problem belongs to eval iff a hash of its prompt lands in the
eval bucket, and the train sampler rejects eval problems.

Prompts of a task all have the same length (operands are zero-padded), so a batch of prompts is
a dense [B, P] tensor and the generator needs no left-padding.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import torch

from bench.tasks.tokenizer import BOS, EOS, PAD, decode, encode


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

    def __init__(self, loss_on: str):
        if loss_on not in ("answer", "all"):
            raise ValueError(f"task.loss_on={loss_on!r}; valid: answer, all")
        self.loss_on = loss_on

    # --- subclasses implement -------------------------------------------------------------
    def sample(self, rng: random.Random) -> Problem:
        raise NotImplementedError

    @property
    def seq_len(self) -> int:
        """BOS + prompt + answer + EOS for every problem (fixed width)."""
        raise NotImplementedError

    @property
    def prompt_len(self) -> int:
        """BOS + prompt."""
        raise NotImplementedError

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

    def encode_prompts(self, probs: list[Problem]) -> torch.Tensor:
        return torch.tensor([[BOS] + encode(p.prompt) for p in probs], dtype=torch.long)

    def lm_batch(self, split: str, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs [B,T], targets [B,T], loss_mask [B,T]) for next-token prediction."""
        probs = self.problems(split, batch_size, seed)
        seqs = [[BOS] + encode(p.prompt + p.answer) + [EOS] for p in probs]
        width = max(len(s) for s in seqs)
        toks = torch.full((len(seqs), width), PAD, dtype=torch.long)
        for i, s in enumerate(seqs):
            toks[i, :len(s)] = torch.tensor(s)
        inputs, targets = toks[:, :-1], toks[:, 1:]
        mask = targets != PAD
        if self.loss_on == "answer":
            mask[:, : self.prompt_len - 1] = False  # predict only answer tokens and EOS
        return inputs, targets, mask

    def completion_text(self, ids) -> str:
        return decode(ids)
