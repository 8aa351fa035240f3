"""The nvfp4 format (Transformer Engine NVFP4, DESIGN.md §5): E2M1 elements (e2m1.py) in 1x16
blocks with E4M3 block decode scales and an fp32 global encode scale; its recipe `nvfp4`.

nvfp4 (TE NVFP4BlockScaling; the order of fp32 operations is the kernel's, see TE's
`compute_global_encode_scaling_factor_FP4` and `compute_decoding_scaling_factor` in its NVFP4
cast kernels and the PyTorch reference custom_recipes/quantization_ref_nvfp4.py):
  g = 448·6 / amax(tensor)   fp32 division; min(g, FLT_MAX) (a denormal amax); 1 if amax is 0 or
                             inf (TE's rule: amax == 0 or g == 0). A NaN amax also gives 1 here
                             (TE's fminf would give FLT_MAX; the NaN propagates either way)
  d = e4m3(clamp(block_amax · (g · (1/6)), ±448))   (1/6) and g·(1/6) rounded to fp32 first
                             (older TE releases computed (block_amax·(1/6))·g: it can differ in
                             the last bit); the cast is round-to-nearest-even onto E4M3; d is 0
                             when block_amax·g/6 < 2^-10: the whole block is *flushed*
                             (zero_block_frac)
  e = 1 / (d · (1/g))        min(e, FLT_MAX): a flushed block gets e = FLT_MAX and q = ±6, and
                             x̂ = q · 0 / g = 0, never NaN
  q = E2M1(clamp(x · e, ±6)) RNE, or stochastic rounding (gradients, `stochastic=True`)
  Tiles: 1x16 along K for inputs and gradients, 16x16 for weights (`weight_2d`, TE's default:
  a square tile is the same tile in W and Wᵀ, so forward and dgrad see one weight).
  The global amax may be passed in (`global_amax`: an amax reduced over ranks or a stale one);
  then block_amax·g/6 may exceed 448 and the decode scale saturates (scale_sat_frac; counted
  above 464, where the clamp changes the E4M3 value).
Recipe defaults: TE's NVFP4BlockScaling (16x16 weight tiles, RHT on the wgrad operands, stochastic
rounding of gradients). Stats `scale`: the global encode scale g.
"""
from __future__ import annotations

import torch

from bench.precision.formats.e2m1 import E2M1_MAX, FLT_MAX, FP4Format, register_fp4

E4M3_MAX = 448.0
E4M3_SAT = 464.0   # the rounding boundary above 448: larger values would round past it
NVFP4_BLOCK = 16


def nvfp4_global_encode(amax: torch.Tensor) -> torch.Tensor:
    """g = 448·6 / amax as an fp32 tensor / tensor division (correctly rounded; `scalar / tensor`
    would be scalar · reciprocal, two roundings), capped at FLT_MAX, 1 for amax 0 / inf / NaN."""
    a = amax.float()
    g = torch.minimum(torch.full_like(a, E4M3_MAX * E2M1_MAX) / a, torch.full_like(a, FLT_MAX))
    return torch.where((a > 0) & torch.isfinite(a), g, torch.ones_like(a))


def nvfp4_scales(bamax: torch.Tensor, g: torch.Tensor):
    """(d, e, saturated) per block from the block amaxes and g, in TE's fp32 order."""
    inv6 = torch.ones((), dtype=torch.float32, device=g.device) / E2M1_MAX  # fl32(1/6)
    raw = bamax.float() * (g * inv6)
    # Saturated = the clamp changed d. Values in (448, 464] round to 448 in E4M3 anyway (464 is
    # the midpoint to the next step, 480, and ties go to 448's even mantissa), and the tensor's
    # own amax lands an fp32 ulp or two above 448 through the roundings of g and g·(1/6): that is
    # not saturation. Above 464 the block's true decode scale does not fit E4M3.
    saturated = raw > E4M3_SAT
    raw = torch.where(torch.isfinite(bamax), raw, torch.full_like(raw, E4M3_MAX))
    d = raw.clamp(max=E4M3_MAX).to(torch.float8_e4m3fn).float()
    e = torch.ones_like(d) / (d * (torch.ones_like(g) / g))
    return d, torch.minimum(e, torch.full_like(e, FLT_MAX)), saturated


class NVFP4Format(FP4Format):
    name = "nvfp4"
    scalings = ("nvfp4",)
    block = NVFP4_BLOCK
    defaults = dict(weight_2d=True, rht=True, stochastic_rounding=True, mx_scale_rounding="floor")  # rounding unused

    def block_scales(self, xf, bamax, r, global_amax):
        g = nvfp4_global_encode(xf.abs().amax() if global_amax is None else global_amax.detach().float())
        d, e, sat = nvfp4_scales(bamax, g)
        return d, e, sat, g

    def summary_scale(self, q):
        return q.global_encode


NVFP4 = register_fp4(NVFP4Format())
