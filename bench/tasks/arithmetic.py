"""Verifiable tasks: multi-digit addition and string reversal."""
from __future__ import annotations

import random
import string
from dataclasses import dataclass

from bench.tasks.base import Problem, Task


@dataclass
class AdditionConfig:
    """task=addition (the one place these defaults live; bench/config/schema.py registers it)."""
    name: str = "addition"
    digits: int = 2
    reverse_answer: bool = True   # least-significant digit first: learnable carry by carry
    loss_on: str = "answer"       # answer | all (prompt digits are random: all adds an irreducible floor)


@dataclass
class ReversalConfig:
    """task=reversal."""
    name: str = "reversal"
    length: int = 5
    loss_on: str = "answer"


class Addition(Task):
    """'017+305=' -> '322' (zero-padded operands; `reverse_answer` writes the sum least
    significant digit first, which is what a left-to-right decoder can compute carry by carry)."""

    name = "addition"
    Config = AdditionConfig

    def __init__(self, digits: int, reverse_answer: bool, loss_on: str, tokenizer=None):
        super().__init__(loss_on, tokenizer)
        if digits <= 0:
            raise ValueError(f"task.digits={digits} must be positive")
        self.digits, self.reverse_answer = digits, reverse_answer

    def sample(self, rng: random.Random) -> Problem:
        a, b = rng.randrange(10 ** self.digits), rng.randrange(10 ** self.digits)
        d = self.digits
        ans = str(a + b).zfill(d + 1)
        return Problem(f"{a:0{d}d}+{b:0{d}d}=", ans[::-1] if self.reverse_answer else ans)

    def char_prompt_len(self) -> int:
        return 1 + 2 * self.digits + 2

    def char_seq_len(self) -> int:
        return self.char_prompt_len() + self.digits + 1 + 1


class Reversal(Task):
    """'abcde>' -> 'edcba' over lowercase letters."""

    name = "reversal"
    Config = ReversalConfig

    def __init__(self, length: int, loss_on: str, tokenizer=None):
        super().__init__(loss_on, tokenizer)
        if length <= 0:
            raise ValueError(f"task.length={length} must be positive")
        self.length = length

    def sample(self, rng: random.Random) -> Problem:
        s = "".join(rng.choice(string.ascii_lowercase) for _ in range(self.length))
        return Problem(s + ">", s[::-1])

    def char_prompt_len(self) -> int:
        return 1 + self.length + 1

    def char_seq_len(self) -> int:
        return self.char_prompt_len() + self.length + 1
