"""What one FP8 cast did to one tensor (DESIGN.md §6 numerics stats), from the tensor x, the
Quantized result and therefore the scales actually used.

  amax            max |x| over all elements, before scaling (NaN if x holds a NaN, inf if an inf)
  scale           the scale used. Per-tensor recipes: the scale. Tiled recipes: the *smallest*
                  tile scale, i.e. the tile with the largest amax, where the resolution is
                  coarsest and overflow would start (a median would hide the outlier tile)
  overflow_frac   finite elements with |x·s| > max before clamping, / x.numel(): the share of the
                  tensor whose information was lost to saturation
  underflow_frac  finite non-zero elements whose FP8 value is 0, / the number of finite non-zero
                  elements (zeros cannot underflow, so they do not dilute the fraction): values with
                  |x·s| below half the smallest subnormal, flushed to zero
  sqnr_db         20·log10(‖x‖ / ‖x − x̂‖) over the finite elements of x: signal to quantization
                  noise. Uniformly spread data gives ~30 dB in E4M3 (3 mantissa bits) and ~25 dB
                  in E5M2. Exact quantization (‖x − x̂‖ = 0, e.g. x already on the scaled FP8
                  grid) gives SQNR_CAP = 200 instead of inf, so aggregates and JSON stay finite;
                  all-zero x is exact too, hence 200
  nonfinite       count of NaN/±inf elements of x (they propagate through the cast, see
                  bench.precision.quantize, and are excluded from the three fractions' numerators
                  and from sqnr so those keep describing the finite part)
All reductions stay on x's device in fp32/fp64; a single .tolist() at the end is the only host
synchronisation.
"""
from __future__ import annotations

import math

import torch

from bench.precision.formats import Float8Format
from bench.precision.quantize import Quantized

SQNR_CAP = 200.0
KEYS = ("amax", "scale", "overflow_frac", "underflow_frac", "sqnr_db", "nonfinite")


def quant_stats(x: torch.Tensor, q: Quantized, fmt: Float8Format | None = None) -> dict[str, float]:
    """The §6 stats of quantizing x into q (fmt defaults to q's format)."""
    fmt = fmt or q.fmt
    xf = x.detach().float()
    if xf.shape != q.data.shape:
        raise ValueError(f"quant_stats: x {tuple(xf.shape)} and q {tuple(q.data.shape)} differ in shape")
    s = q.scale_full()
    finite = torch.isfinite(xf)
    qf = q.data.float()
    nz = finite & (xf != 0)
    xd = torch.where(finite, xf, 0.0).double()
    err = xd - torch.where(finite, qf / s, 0.0).double()  # x̂ = q / s, exactly as dequantize()
    vals = torch.stack([
        xf.abs().amax().double() if xf.numel() else torch.zeros((), dtype=torch.float64, device=xf.device),
        q.scale.double().min(),
        (finite & ((xf * s).abs() > fmt.max)).sum().double() / max(xf.numel(), 1),
        (nz & (qf == 0)).sum().double() / nz.sum().clamp(min=1).double(),
        xd.norm(),
        err.norm(),
        (~finite).sum().double(),
    ]).tolist()
    amax, scale, over, under, norm, err_norm, nonfinite = vals
    if err_norm == 0:
        sq = SQNR_CAP
    else:
        sq = min(SQNR_CAP, 20 * math.log10(max(norm, 1e-300) / err_norm))
    return {"amax": amax, "scale": scale, "overflow_frac": over, "underflow_frac": under,
            "sqnr_db": sq, "nonfinite": nonfinite}
