"""What one cast did to one tensor (DESIGN.md §6 numerics stats), for every format: computed from
the tensor x and the quantized result q, therefore from the scales actually used. The frame here
computes the keys every format shares; the format's quantized tensor adds its own terms
(`q.stat_terms`: FP8 in bench/precision/formats/fp8.py, FP4 in formats/e2m1.py), says which
elements it turned into 0 (`q.zeros`) and names the keys in their order (`q.stat_keys`):

  amax            max |x| over all elements, before scaling (NaN if x holds a NaN, inf if an inf)
  scale           the format's summary of the scales used. FP8 per-tensor recipes: the scale; tiled
                  recipes: the *smallest* tile scale, i.e. the tile with the largest amax, where the
                  resolution is coarsest and overflow would start (a median would hide the outlier
                  tile). nvfp4: the global encode scale g; mxfp4: the smallest block multiplier 1/X
  overflow_frac   finite elements lost to saturation, / x.numel(): FP8 |x·s| > max before clamping;
                  FP4 a clamp to ±6 that changed the E2M1 value (|x·e| >= 7, e2m1.py says why)
  underflow_frac  finite non-zero elements the cast turned into 0, / the number of finite non-zero
                  elements (zeros cannot underflow, so they do not dilute the fraction): FP8 values
                  with |x·s| below half the smallest subnormal, flushed to zero; FP4 q = 0 or a
                  flushed block
  scale_sat_frac, zero_block_frac   FP4 only: decode scales clamped, blocks flushed (e2m1.py)
  sqnr_db         20·log10(‖x‖ / ‖x − x̂‖) over the finite elements of x: signal to quantization
                  noise. Uniformly spread data gives ~30 dB in E4M3 (3 mantissa bits) and ~25 dB
                  in E5M2. Exact quantization (‖x − x̂‖ = 0, e.g. x already on the scaled FP8
                  grid) gives SQNR_CAP = 200 instead of inf, so aggregates and JSON stay finite;
                  all-zero x is exact too, hence 200
  nonfinite       count of NaN/±inf elements of x (they propagate through the cast, see
                  bench/precision/formats/fp8.py, and are excluded from the fractions' numerators
                  and from sqnr so those keep describing the finite part)
x̂ is q.dequantize() (FP8: q / s, exactly; FP4: q·d/g). All reductions stay on x's device in
fp32/fp64; a single .tolist() at the end is the only host synchronisation.
"""
from __future__ import annotations

import math

import torch

from bench.core.events import Event

SQNR_CAP = 200.0


def quant_stats(x: torch.Tensor, q, fmt=None) -> dict[str, float]:
    """The §6 stats of quantizing x into q, in the keys of q's format. `fmt` (FP8 only) overrides
    the element format the overflow threshold is read from (default: q's)."""
    xf = x.detach().float()
    if xf.shape != q.shape:
        raise ValueError(f"quant_stats: x {tuple(xf.shape)} and q {tuple(q.shape)} differ in shape")
    finite = torch.isfinite(xf)
    nz = finite & (xf != 0)
    xhat = q.dequantize()
    xd = torch.where(finite, xf, 0.0).double()
    err = xd - torch.where(finite, xhat, 0.0).double()
    common = {
        "amax": xf.abs().amax().double() if xf.numel() else torch.zeros((), dtype=torch.float64, device=xf.device),
        "underflow_frac": (nz & q.zeros(xhat)).sum().double() / nz.sum().clamp(min=1).double(),
        "norm": xd.norm(),
        "err_norm": err.norm(),
        "nonfinite": (~finite).sum().double(),
    }
    terms = {**common, **q.stat_terms(xf, finite, nz, xhat, fmt)}
    vals = dict(zip(terms, torch.stack(list(terms.values())).tolist()))
    norm, err_norm = vals.pop("norm"), vals.pop("err_norm")
    sq = SQNR_CAP if err_norm == 0 else min(SQNR_CAP, 20 * math.log10(max(norm, 1e-300) / err_norm))
    out = {**vals, "sqnr_db": sq}
    return {k: out[k] for k in q.stat_keys}


def zero_block_event(stats: dict[str, float], step: int, where: str, threshold: float,
                     action: str = "log") -> Event | None:
    """An `underflow` event when zero_block_frac exceeds `threshold` (a silent failure: the
    tensor's loss is otherwise invisible in overflow_frac, and its SQNR can still look fine when
    the flushed blocks are small), else None. `where` is the tensor, e.g.
    "numerics/blocks.0.attn.qkv/input"."""
    v = stats["zero_block_frac"]
    if not v > threshold:
        return None
    return Event(step=step, kind="underflow", where=where, value=v, threshold=threshold, action=action,
                 stat="zero_block_frac")
