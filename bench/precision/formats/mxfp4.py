"""The mxfp4 format (OCP MX v1.0, DESIGN.md §5): E2M1 elements (e2m1.py) in 1x32 blocks with a
power-of-two (E8M0) scale per block; its recipe `mxfp4`.

mxfp4 (OCP MX v1.0; TE has no MXFP4 recipe): 1x32 blocks along K for every role, E8M0 scale
  floor: X = 2^(floor(log2 block_amax) − 2)   (2 = emax of E2M1: 6 = 1.5·2^2). block_amax/X lies
         in [4, 8), so elements in (6, 8)·X are clamped to 6 by design, as in mxfp8; those in
         [7, 8)·X would have rounded to 8 and count as overflow_frac (e2m1.py, stats)
  rceil: X = 2^ceil(log2(block_amax / 6))    the smallest power of two that fits, never saturates
  Exponent clamped to E8M0's −127..127; an all-zero (or non-finite) block gets X = 1.
  q = E2M1(clamp(x / X, ±6)), x̂ = q · X: both exact (X is a power of two).
Recipe defaults: plain OCP MX (1x32 for every role, floor, no RHT, no stochastic rounding; TE ships
no MXFP4 recipe to follow, the switches are there to study it). Stats `scale`: the smallest block
multiplier 1/X (the block with the largest amax, where resolution is coarsest).
"""
from __future__ import annotations

import torch

from bench.core.errors import BadInput
from bench.precision.formats.e2m1 import FP4Format, register_fp4

MXFP4_BLOCK = 32


def mxfp4_scales(bamax: torch.Tensor, rounding: str):
    """(X, 1/X, saturated) per block, from frexp exponents exactly (bamax = m·2^E, m in [0.5, 1)):
      floor:  floor(log2 bamax) − 2 = E − 3
      rceil:  ceil(log2(bamax/6)) = E − 3 + [m > 0.75]   (6 = 0.75·2^3; m/0.75 in [2/3, 4/3))
    `saturated`: the exponent hit E8M0's ±127 limit."""
    a = bamax.float()
    m, ex = torch.frexp(a)
    x_exp = ex - 3
    if rounding == "rceil":
        x_exp = x_exp + (m > 0.75).to(ex.dtype)
    ok = (a > 0) & torch.isfinite(a)
    saturated = ok & ((x_exp < -127) | (x_exp > 127))
    x_exp = torch.where(ok, x_exp.clamp(-127, 127), torch.zeros_like(x_exp))
    one = torch.ones_like(a)
    return torch.ldexp(one, x_exp), torch.ldexp(one, -x_exp), saturated


class MXFP4Format(FP4Format):
    name = "mxfp4"
    scalings = ("mxfp4",)
    block = MXFP4_BLOCK
    defaults = dict(weight_2d=False, rht=False, stochastic_rounding=False, mx_scale_rounding="floor")
    recipe_fields = {"mx_block": MXFP4_BLOCK}  # the block of the format, recorded like mxfp8's

    def check_knobs(self, r):
        if r.weight_2d:
            raise BadInput("precision.weight_2d=true for mxfp4; valid: false (MX blocks are 1x32 along K "
                           "for every role)")

    def block_scales(self, xf, bamax, r, global_amax):
        d, e, sat = mxfp4_scales(bamax, r.mx_scale_rounding)
        return d, e, sat, torch.ones((), dtype=torch.float32, device=xf.device)

    def summary_scale(self, q):
        return q.encode.min()


MXFP4 = register_fp4(MXFP4Format())
