"""What one FP4 cast did to one tensor (the FP4 numerics monitor, issue 13 item 2), from x and the
FP4Quantized result, i.e. from the scales actually used.

  amax             max |x| (NaN/inf if x holds one)
  scale            nvfp4: the global encode scale g; mxfp4: the smallest block multiplier 1/X
                   (the block with the largest amax, where resolution is coarsest)
  overflow_frac    finite elements whose clamp to ±6 changed their E2M1 value, / numel: |x·e| >= 7,
                   the IEEE overflow threshold (max 6 plus half the ulp 2 of its binade; 7 ties to
                   8's even mantissa), counted in blocks that are not flushed (a flushed block has
                   e = FLT_MAX by construction: its elements are lost to the flush, not to
                   saturation). Why not |x·e| > 6: the E4M3 rounding of d lands below
                   block_amax·g/6 in about half the nvfp4 blocks, putting the block's largest element
                   up to 6.25 % over 6, where it rounds to 6 anyway; counting it would report ~3 %
                   overflow on every tensor (over the monitor's 1e-3 event threshold) for a clamp
                   that changes nothing. Real overflow: a stale or passed global amax (nvfp4), the
                   top binade of mxfp4 floor ((7, 8)·X by design)
  underflow_frac   finite non-zero elements whose x̂ is 0 (q = 0, or a flushed block), / the number
                   of finite non-zero elements
  scale_sat_frac   blocks whose decode scale was clamped: nvfp4 block_amax·(g·(1/6)) > 448 by more
                   than E4M3 rounding (> 464; only with a passed or stale global amax: the tensor's
                   own amax keeps it within an ulp of 448);
                   mxfp4 an E8M0 exponent outside ±127. / the number of blocks
  zero_block_frac  blocks holding a finite non-zero element whose x̂ is entirely 0, / the number of
                   such non-zero blocks. nvfp4: exactly the blocks whose E4M3 decode scale rounds to
                   0, block_amax < 2^-10 · amax/448: one outlier that sets g silently flushes every
                   block more than ~2^19 smaller. The monitor raises it as an `underflow` event
  sqnr_db          20·log10(‖x‖/‖x − x̂‖) over the finite elements, capped at SQNR_CAP = 200
  nonfinite        count of NaN/±inf elements (they become NaN in x̂)
All reductions stay on x's device; one .tolist() at the end is the only host synchronisation.
"""
from __future__ import annotations

import math

import torch

from bench.core.events import Event
from bench.precision.fp4 import E2M1_OVERFLOW, FP4Quantized

SQNR_CAP = 200.0
FP4_KEYS = ("amax", "scale", "overflow_frac", "underflow_frac", "scale_sat_frac", "zero_block_frac",
            "sqnr_db", "nonfinite")


def _per_block_any(mask: torch.Tensor, tile) -> torch.Tensor:
    rows, cols = mask.shape
    tr, tc = tile
    return mask.view(rows // tr, tr, cols // tc, tc).any(dim=3).any(dim=1)


def fp4_quant_stats(x: torch.Tensor, q: FP4Quantized) -> dict[str, float]:
    """The stats above for quantizing x into q."""
    xf = x.detach().float()
    if xf.shape != q.q.shape:
        raise ValueError(f"fp4_quant_stats: x {tuple(xf.shape)} and q {tuple(q.q.shape)} differ in shape")
    finite = torch.isfinite(xf)
    nz = finite & (xf != 0)
    xhat = q.dequantize()
    lost = nz & (xhat == 0)
    nz_blocks = _per_block_any(nz, q.tile)
    kept_blocks = _per_block_any(nz & (xhat != 0), q.tile)
    flushed = nz_blocks & ~kept_blocks
    in_flushed = q.expand(flushed)
    over = finite & ~in_flushed & ((xf * q.expand(q.encode)).abs() >= E2M1_OVERFLOW)
    xd = torch.where(finite, xf, 0.0).double()
    err = xd - torch.where(finite, xhat, 0.0).double()
    scale = q.global_encode if q.recipe == "nvfp4" else q.encode.min()
    n = max(xf.numel(), 1)
    vals = torch.stack([
        xf.abs().amax().double() if xf.numel() else torch.zeros((), dtype=torch.float64, device=xf.device),
        scale.double(),
        over.sum().double() / n,
        lost.sum().double() / nz.sum().clamp(min=1).double(),
        q.saturated.sum().double() / max(q.saturated.numel(), 1),
        flushed.sum().double() / nz_blocks.sum().clamp(min=1).double(),
        xd.norm(),
        err.norm(),
        (~finite).sum().double(),
    ]).tolist()
    amax, scale, over, under, sat, zero_blocks, norm, err_norm, nonfinite = vals
    sq = SQNR_CAP if err_norm == 0 else min(SQNR_CAP, 20 * math.log10(max(norm, 1e-300) / err_norm))
    return {"amax": amax, "scale": scale, "overflow_frac": over, "underflow_frac": under,
            "scale_sat_frac": sat, "zero_block_frac": zero_blocks, "sqnr_db": sq, "nonfinite": nonfinite}


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
