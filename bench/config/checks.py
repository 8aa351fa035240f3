"""The few primitives every check is written with: one failed condition is one BadInput line."""
from __future__ import annotations

import fnmatch
import math

from bench.core.errors import BadInput


def need(ok: bool, msg: str) -> None:
    """Raise BadInput(msg) unless ok; msg names the value and the valid choices."""
    if not ok:
        raise BadInput(msg)


def positive(node, prefix: str, *keys: str) -> None:
    for k in keys:
        v = node[k]
        need(v > 0, f"{prefix}{k}={v} must be a positive number; valid: > 0")


def one_of(value, what: str, valid) -> None:
    need(value in valid, f"{what}={value!r}; valid: {', '.join(map(str, valid))}")


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fnmatch_any(pattern: str, names) -> bool:
    return any(fnmatch.fnmatch(n, pattern) for n in names)
