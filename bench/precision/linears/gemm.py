"""The one scaled-GEMM dispatcher: a·bᵀ from quantized operands of any format, for the trainer's
reference linear (forward, dgrad, wgrad) and the generator's inference linear alike.

Both operands are quantized along the reduction dim K: a [M, K], b [N, K]. With per-element
scales s_a, s_b the exact product is
    (a·bᵀ)[m, n] = Σ_k (q_a[m,k] / s_a[m,k]) · (q_b[n,k] / s_b[n,k]).
When the scales do not vary along k they factor out of every dot product:
    = (1 / (s_a[m] · s_b[n])) · Σ_k q_a[m,k] · q_b[n,k],
which is what a scaled FP8 GEMM computes (torch._scaled_mm: FP8 × FP8 products accumulated in
fp32, the dequantisation factors 1/s applied to the output). That holds for
  per-tensor × per-tensor  (tensorwise, delayed): scale_a [], scale_b []
  per-row × per-row        (rowwise, tile (1, K)): scale_a [M, 1], scale_b [1, N]
Tile- and block-scaled operands (blockwise, MX, and any registered recipe with K-varying scales)
change scale inside a dot product, which a plain scaled GEMM cannot express: those multiply the
dequantized operands in fp32, the same products up to accumulation order (what a block-scaled
kernel such as DeepGEMM or the sm100 MX GEMM computes, one K-tile partial sum at a time).
Operands of another format (FP4: E2M1 codes with two-level block scales) take that route too:
x̂ = q.dequantize() is what a block-scaled FP4 GEMM multiplies, up to accumulation order.
A high-precision `a` (a plain tensor: the weights-only W8A16 generator path) takes the same
fp32 route: the weight-only kernels (e.g. Marlin-style FP8) dequantize the weight in registers
and accumulate in fp32.

_scaled_mm is used where M, N and K are multiples of 16 (the FP8 tensor-core alignment; N and K
are checked for every FP8 Linear before compute, the token count M varies, e.g. a decode step's
batch); where it is not, or where this device's kernel lacks a format pair (E5M2 × E5M2 on
CUDA) or a scale layout, the fp32 route gives the same math up to accumulation order.
"""
from __future__ import annotations

import torch

from bench.precision.formats.fp8 import Quantized


def _scaled_mm_scales(a: Quantized, b: Quantized) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Dequantisation factors (1/s_a, 1/s_b) in _scaled_mm's layouts, or None when the scales
    do not factor out of the dot products (see the module docstring)."""
    if a.tile is None and b.tile is None:
        return torch.reciprocal(a.scale.float()), torch.reciprocal(b.scale.float())
    K = a.data.shape[1]
    if a.tile == (1, K) and b.tile == (1, K):
        return torch.reciprocal(a.scale.float()).reshape(-1, 1), torch.reciprocal(b.scale.float()).reshape(1, -1)
    return None


def factors_out(q, k: int) -> bool:
    """Whether a quantized weight's scales factor out of the dot products over K (per tensor, or
    one per row), so that _scaled_mm can run on its FP8 bytes (module docstring)."""
    return isinstance(q, Quantized) and (q.tile is None or q.tile == (1, k))


def scaled_gemm(a, b, out_dtype: torch.dtype = torch.float32,
                fast_accum: bool = False, use_scaled_mm: bool = True, b_hat: torch.Tensor | None = None
                ) -> torch.Tensor:
    """a [M,K] (quantized in any format, or high precision), b [N,K] quantized, both along K ->
    a·bᵀ [M,N] in `out_dtype`. fast_accum: CUDA only (the lower-precision tensor-core accumulator, tolerated
    in forward GEMMs). b_hat: b.dequantize() precomputed by a caller that reuses b (a frozen
    inference weight), saving the dequantisation per call."""
    if isinstance(a, Quantized) and isinstance(b, Quantized):
        M, K = a.data.shape
        N = b.data.shape[0]
        scales = _scaled_mm_scales(a, b) if use_scaled_mm and not (M % 16 or N % 16 or K % 16) else None
        if scales is not None:
            try:
                return torch._scaled_mm(a.data.contiguous(), b.data.contiguous().t(),  # b column-major
                                        scale_a=scales[0], scale_b=scales[1], out_dtype=out_dtype,
                                        use_fast_accum=bool(fast_accum and a.data.is_cuda))
            except (RuntimeError, NotImplementedError):
                pass  # a shape/format/scale layout this device's kernel lacks: same math below
        a_hat = a.dequantize()
    else:
        a_hat = a.float() if isinstance(a, torch.Tensor) else a.dequantize()
    b_hat = b.dequantize() if b_hat is None else b_hat
    return (a_hat @ b_hat.t()).to(out_dtype)
