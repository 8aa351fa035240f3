"""A user's own plain-text file as LM data: random windows, eval = the file's last 10%.

No verifiable reward (it is a pretraining corpus), so it supports `recipes.pretrain` only; the
split is by position, so train and eval windows never overlap.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING

from bench.tasks.base import Task
from bench.tasks.tokenizer import clean, encode


@dataclass
class TextFileConfig:
    """task=textfile: `path` is required (MISSING until given)."""
    name: str = "textfile"
    path: str = MISSING
    window: int = 64              # tokens per training window


class TextFile(Task):
    name = "textfile"
    Config = TextFileConfig

    def __init__(self, path: str, window: int, tokenizer=None):
        super().__init__(loss_on="all", tokenizer=tokenizer)  # a corpus has no prompt: every token is a target
        p = Path(path)
        if path in ("", MISSING):
            raise ValueError("task=textfile needs task.path=FILE (a plain-text file); none given")
        if not p.is_file():
            raise ValueError(f"task.path={path!r} is not a readable file; valid: a plain-text file")
        if window <= 0:
            raise ValueError(f"task.window={window} must be a positive number of tokens; valid: > 0")
        text = p.read_text(errors="ignore")
        ids = encode(clean(text)) if self.tok.exact_width else self.tok.encode(text)
        if len(ids) < 20 * (window + 1):
            raise ValueError(f"task.path={path!r} holds {len(ids)} usable tokens; need >= {20 * (window + 1)} "
                             f"(20 windows of task.window={window}); valid: a longer file or a smaller task.window")
        cut = int(len(ids) * 0.9)
        self.window = window
        self.data = {"train": torch.tensor(ids[:cut]), "eval": torch.tensor(ids[cut:])}

    @property
    def seq_len(self) -> int:
        return self.window + 1

    @property
    def prompt_len(self) -> int:
        return 0

    def lm_batch(self, split, batch_size, seed):
        data, rng = self.data[split], random.Random(seed)
        starts = [rng.randrange(len(data) - self.window - 1) for _ in range(batch_size)]
        toks = torch.stack([data[s:s + self.window + 1] for s in starts])
        return toks[:, :-1], toks[:, 1:], torch.ones_like(toks[:, 1:], dtype=torch.bool)

    def problems(self, split, n, seed):
        raise ValueError("task=textfile has no prompts/answers: use it with recipes.pretrain and eval loss only")
