"""The two FP8 formats of the OCP FP8 spec, as torch implements them (DESIGN.md §5).

  E4M3 (float8_e4m3fn): 4 exponent bits, 3 mantissa bits, no infinities ("fn" = finite + NaN);
        max 448 = 1.75·2^8, smallest subnormal 2^-9. Relative step 2^-3 = 12.5 % per binade
        but only ~18 binades of range.
  E5M2 (float8_e5m2):   5 exponent bits, 2 mantissa bits, IEEE-like with ±inf; max 57344 =
        1.75·2^15, smallest subnormal 2^-16. Coarser (25 % steps) but ~32 binades of range.

Why E4M3 forward and E5M2 gradients (the "HYBRID" recipes): activations and weights are bounded
and fairly well conditioned, so the extra mantissa bit buys accuracy; gradients span many more
orders of magnitude within one tensor (a few huge entries, a long tail of tiny ones) and a single
per-tensor scale must cover all of them, so range matters more than precision. Fine-grained
recipes (rowwise, blockwise, MX) give every row/tile its own scale, which removes most of that
dynamic-range problem, so they keep E4M3 for gradients too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Float8Format:
    name: str
    dtype: torch.dtype
    max: float            # largest finite magnitude: everything is clamped to ±max before the cast
    min_subnormal: float  # smallest positive value; |x·s| < min_subnormal / 2 flushes to 0

    @property
    def emax(self) -> int:
        """Exponent of the largest power of two <= max (8 for E4M3, 15 for E5M2): the "emax_elem"
        of the OCP MX spec, which places an MX block's amax in the element format's top binade."""
        return math.floor(math.log2(self.max))

    @property
    def has_inf(self) -> bool:
        """E5M2 can hold ±inf; E4M3fn cannot (an infinite input becomes NaN there)."""
        return self.dtype == torch.float8_e5m2


FORMATS: dict[str, Float8Format] = {
    "e4m3": Float8Format("e4m3", torch.float8_e4m3fn, 448.0, 2.0 ** -9),
    "e5m2": Float8Format("e5m2", torch.float8_e5m2, 57344.0, 2.0 ** -16),
}
