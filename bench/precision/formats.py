"""The two FP8 formats of the OCP FP8 spec, as torch implements them.

  E4M3 (float8_e4m3fn): 4 exponent bits, 3 mantissa bits, no infinities; max 448, smallest
        subnormal 2^-9. More precision, less range: forward activations and weights.
  E5M2 (float8_e5m2):   5 exponent bits, 2 mantissa bits (IEEE-like); max 57344, smallest
        subnormal 2^-16. More range, less precision: gradients, whose dynamic range is wider.
`emax` is the exponent of the largest power of two in the format (2^8 = 256 <= 448 for E4M3,
2^15 for E5M2); MX scaling uses it to place a block's amax at the top of the element range.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Float8Format:
    name: str
    dtype: torch.dtype
    max: float
    min_subnormal: float
    emax: int


FORMATS = {
    "e4m3": Float8Format("e4m3", torch.float8_e4m3fn, 448.0, 2.0 ** -9, 8),
    "e5m2": Float8Format("e5m2", torch.float8_e5m2, 57344.0, 2.0 ** -16, 15),
}
