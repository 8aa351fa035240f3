"""task=arith: multi-step arithmetic word problems with a verifiable integer answer.

    'Ann has 7 pens. She gets 5 more. She gives away 3. She doubles them. How many pens? Answer:'
    -> ' 18'

Each problem starts from an integer and applies `min_ops`..`max_ops` operations (add, subtract,
multiply by 2 or 3), each one sentence; subtraction never takes more than there is, so every
intermediate value is a non-negative count. `difficulty` d sets the operand size (start and
added/removed amounts in 1..10^d - 1). Problems are a pure function of the seed; the held-out
split is the base class's hash split (a problem's prompt decides its split, so eval problems
never appear in training).

Answer format: the target completion is ' N' after the prompt's 'Answer:'. The reward parses
the integer after the completion's last 'Answer:' if it writes one (a chat model restating the
format), else the integer it starts with; 1.0 when it equals N exactly, else 0.0.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from bench.tasks.base import Problem, Task

NAMES = (("Ann", "She"), ("Bob", "He"), ("Eve", "She"), ("Tom", "He"), ("Mia", "She"), ("Sam", "He"))
ITEMS = ("pens", "cards", "coins", "books", "apples", "stamps")
FACTORS = {2: "doubles", 3: "triples"}
_LAST_ANSWER = re.compile(r"Answer:\s*(-?\d+)")
_LEADING = re.compile(r"\s*(-?\d+)")


@dataclass
class ArithConfig:
    """task=arith (the one place these defaults live)."""
    name: str = "arith"
    difficulty: int = 1           # operand digits: start and amounts in 1..10^difficulty - 1
    min_ops: int = 2              # operations per problem, drawn uniformly from min_ops..max_ops
    max_ops: int = 4
    loss_on: str = "answer"


def parse_answer(completion: str) -> int | None:
    """The integer a completion answers with (see the module docstring), or None."""
    found = _LAST_ANSWER.findall(completion)
    if found:
        return int(found[-1])
    m = _LEADING.match(completion)
    return int(m.group(1)) if m else None


class Arith(Task):
    name = "arith"
    Config = ArithConfig

    def __init__(self, difficulty: int, min_ops: int, max_ops: int, loss_on: str, tokenizer=None):
        super().__init__(loss_on, tokenizer)
        if difficulty < 1:
            raise ValueError(f"task.difficulty={difficulty}; valid: an operand digit count >= 1")
        if not 1 <= min_ops <= max_ops:
            raise ValueError(f"task.min_ops={min_ops}, task.max_ops={max_ops}; valid: 1 <= min_ops <= max_ops")
        self.difficulty, self.min_ops, self.max_ops = difficulty, min_ops, max_ops

    def _step(self, rng: random.Random, value: int, pron: str) -> tuple[int, str]:
        top = 10 ** self.difficulty - 1
        kind = rng.choice(("add", "sub", "mul") if value > 0 else ("add", "mul"))
        if kind == "add":
            n = rng.randint(1, top)
            return value + n, f"{pron} gets {n} more."
        if kind == "sub":
            n = rng.randint(1, min(top, value))
            return value - n, f"{pron} gives away {n}."
        f = rng.choice(tuple(FACTORS))
        return value * f, f"{pron} {FACTORS[f]} them."

    def sample(self, rng: random.Random) -> Problem:
        (name, pron), item = rng.choice(NAMES), rng.choice(ITEMS)
        value = rng.randint(1, 10 ** self.difficulty - 1)
        parts = [f"{name} has {value} {item}."]
        for _ in range(rng.randint(self.min_ops, self.max_ops)):
            value, sentence = self._step(rng, value, pron)
            parts.append(sentence)
        parts.append(f"How many {item}? Answer:")
        return Problem(" ".join(parts), f" {value}")

    def reward(self, p: Problem, completion: str) -> float:
        return float(parse_answer(completion) == int(p.answer))

    # --- exact widths under the character tokenizer (upper bounds over every problem) ---------
    def _max_value(self) -> int:
        top, v = 10 ** self.difficulty - 1, 10 ** self.difficulty - 1
        for _ in range(self.max_ops):
            v = max(v + top, v * 3)
        return v

    def char_prompt_len(self) -> int:
        d, name, pron = self.difficulty, max(len(n) for n, _ in NAMES), max(len(p) for _, p in NAMES)
        item = max(len(i) for i in ITEMS)
        first = name + len(" has ") + d + 1 + item + 1
        step = pron + max(len(" gets  more.") + d, len(" gives away .") + d,
                          max(len(f" {w} them.") for w in FACTORS.values()))
        last = len("How many ? Answer:") + item
        return 1 + first + self.max_ops * (1 + step) + 1 + last  # BOS, sentences joined by spaces

    def char_seq_len(self) -> int:
        return self.char_prompt_len() + 1 + len(str(self._max_value())) + 1
