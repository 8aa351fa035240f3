"""What one FP8 cast did to one tensor (DESIGN.md §6 numerics stats).

  amax            max |x| (before scaling)
  scale           the scale used; for tiled recipes the smallest tile scale (the tile with the
                  largest amax: where resolution is coarsest)
  overflow_frac   elements with |x·s| > max before clamping, / all elements: information lost
                  to saturation
  underflow_frac  non-zero elements whose quantized value is 0, / non-zero elements: values
                  below half the smallest subnormal (after scaling) flushed to zero
  sqnr_db         20·log10(‖x‖ / ‖x − x̂‖): signal-to-quantization-noise; ~ 30 dB is typical
                  for E4M3 on well-scaled data (3 mantissa bits), capped at 200 when exact
  nonfinite       NaN/Inf elements of x
All reductions stay on the device; one transfer at the end.
"""
from __future__ import annotations

import math

import torch

from bench.precision.formats import Float8Format
from bench.precision.quantize import Quantized

SQNR_CAP = 200.0


def quant_stats(x: torch.Tensor, q: Quantized, fmt: Float8Format | None = None) -> dict[str, float]:
    fmt = fmt or q.fmt
    xf = x.detach().float()
    s = q.scale_full()
    xs = xf * s
    x_hat = q.data.float() / s
    nz = xf != 0
    err = (xf.double() - x_hat.double()).norm()
    vals = torch.stack([
        xf.abs().amax().double(),
        q.scale.double().min(),
        (xs.abs() > fmt.max).sum().double() / xf.numel(),
        (nz & (q.data.float() == 0)).sum().double() / nz.sum().clamp(min=1).double(),
        xf.double().norm(),
        err,
        (~torch.isfinite(xf)).sum().double(),
    ]).tolist()
    amax, scale, over, under, norm, err, nonfinite = vals
    if err == 0 or not math.isfinite(err):
        sq = SQNR_CAP if err == 0 else float("nan")
    else:
        sq = min(SQNR_CAP, 20 * math.log10(max(norm, 1e-300) / err))
    return {"amax": amax, "scale": scale, "overflow_frac": over, "underflow_frac": under,
            "sqnr_db": sq, "nonfinite": nonfinite}
