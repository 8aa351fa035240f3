"""Verifiers for task=jsonl: completion text x reference answer -> reward in {0.0, 1.0}.

  exact    the completion, stripped of surrounding whitespace, equals the answer stripped
  numeric  the last number written in the completion equals the answer's number as exact
           decimals ("0.50" == ".5", "1,000" == "1000"); the last number, as verl's GSM8K
           scorer does in its "flexible" mode (verl/utils/reward_score/gsm8k.py), so a chat
           model that reasons before answering is scored on its final figure
  math     math-verify (HF's symbolic checker: `math_verify.parse` on both sides, then
           `math_verify.verify(gold, pred)`), the checker TRL's and open-r1's accuracy rewards use;
           an optional extra: pip install 'fp8bench[math]'

`check_answer(verifier, answer)` says why a reference answer cannot be scored (None when it can):
the task runs it on every row in its one validation pass.
"""
from __future__ import annotations

import re
from fractions import Fraction

VERIFIERS = ("exact", "numeric", "math")
# An optional sign, digits with optional thousands commas, an optional fraction, an optional exponent.
_NUMBER = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")


def parse_number(text: str) -> Fraction | None:
    """The value of the last number in `text` (None when it holds none), exactly."""
    found = _NUMBER.findall(text)
    return Fraction(found[-1].replace(",", "")) if found else None


def _math_verify():
    try:
        import math_verify
    except ImportError:
        raise ValueError("task.verifier=math needs the math-verify package, which is not installed; "
                         "valid: pip install 'fp8bench[math]', or task.verifier=exact|numeric") from None
    return math_verify


def check_verifier(verifier: str) -> None:
    if verifier not in VERIFIERS:
        raise ValueError(f"task.verifier={verifier!r}; valid: {', '.join(VERIFIERS)}")
    if verifier == "math":
        _math_verify()


def check_answer(verifier: str, answer: str) -> str | None:
    if verifier == "numeric" and parse_number(answer) is None:
        return f"answer {answer!r} holds no number (task.verifier=numeric)"
    if verifier == "math" and not _math_verify().parse(answer):
        return f"answer {answer!r} does not parse as math (task.verifier=math)"
    return None


def score(verifier: str, answer: str, completion: str) -> float:
    if verifier == "exact":
        return float(completion.strip() == answer.strip())
    if verifier == "numeric":
        got = parse_number(completion)
        return float(got is not None and got == parse_number(answer))
    mv = _math_verify()
    return float(mv.verify(mv.parse(answer), mv.parse(completion)))
