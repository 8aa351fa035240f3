"""The reference FP8 linear: y = x Wᵀ with the recipe's casts on all three GEMMs.

  forward  y  = x  · Wᵀ   reduces over K: x [M,K] (role input) and W [N,K] (role weight),
                          both tiled along K, fwd format (E4M3)
  dgrad    dx = dy · W    reduces over N: dy [M,N] (role grad_output, grad format) and
                          Wᵀ [K,N], both along N
  wgrad    dW = dyᵀ · x   reduces over M (tokens): dyᵀ [N,M] and xᵀ [K,M], both along M
A scale must be constant along the reduction dim of its GEMM, or the dequantisation would not
factor out of the dot product. Per-tensor scales are constant along every dim, so the forward's
quantized x and W are reused transposed in backward (what TE and torchao tensorwise do). Row-,
tile- and block-wise scales are not, so each backward GEMM re-quantizes its operands along its
own reduction dim from the high-precision tensors saved in forward (torchao rowwise, TE
blockwise). The one exception is the 128x128 weight block: square, so Wᵀ's blocks are W's.

GEMMs go through torch._scaled_mm (fp8 x fp8 -> fp32 with dequantisation scales 1/s) whenever
both operands carry per-tensor scales and the shapes allow it; otherwise the dequantized
operands are multiplied in fp32, which is what a scaled GEMM computes up to accumulation order.
Delayed-scaling histories update only in training forwards/backwards with grad enabled, so
evaluation and no-grad recomputes never move them.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.precision.formats import FORMATS
from bench.precision.quantize import AmaxHistory, Quantized, quantize, tile_amax
from bench.precision.recipes import Recipe, get_recipe
from bench.precision.stats import quant_stats

ROLES = ("input", "weight", "grad_output")


def _transpose(q: Quantized) -> Quantized:
    """The same quantization of the transposed tensor (valid for per-tensor and square blocks)."""
    scale = q.scale if q.scale.dim() == 0 else q.scale.t()
    return Quantized(q.data.t().contiguous(), scale, (q.tile[1], q.tile[0]), q.fmt)


def scaled_gemm(a: Quantized, b: Quantized, fast_accum: bool = False) -> torch.Tensor:
    """a [M,K], b [N,K] -> a·bᵀ [M,N] in fp32."""
    M, K = a.data.shape
    N = b.data.shape[0]
    if a.scale.dim() == 0 and b.scale.dim() == 0 and M % 16 == 0 and K % 16 == 0 and N % 16 == 0:
        try:
            return torch._scaled_mm(a.data.contiguous(), b.data.t(), scale_a=(1.0 / a.scale).float(),
                                    scale_b=(1.0 / b.scale).float(), out_dtype=torch.float32,
                                    use_fast_accum=fast_accum and a.data.is_cuda)
        except (RuntimeError, NotImplementedError):
            pass  # e.g. a format pair this device's kernel lacks: fall back to the same math
    return a.dequantize() @ b.dequantize().t()


class _FP8LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, mod):
        qx = mod.quantize_role(x, "input")
        qw = mod.quantize_role(weight, "weight")
        y = scaled_gemm(qx, qw, fast_accum=mod.recipe.fast_accum)
        ctx.save_for_backward(x, weight)
        ctx.mod, ctx.qx, ctx.qw = mod, qx, qw
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        mod, r = ctx.mod, ctx.mod.recipe
        dy = dy.float()
        qdy = mod.quantize_role(dy, "grad_output")
        if r.per_tensor:
            qwt, qdyt, qxt = _transpose(ctx.qw), _transpose(qdy), _transpose(ctx.qx)
        else:
            qwt = _transpose(ctx.qw) if r.scaling == "blockwise" else quantize(w.t().float(), r, "weight")
            qdyt = quantize(dy.t(), r, "grad_output")
            qxt = quantize(x.t().float(), r, "input")
        dx = scaled_gemm(qdy, qwt)
        dw = scaled_gemm(qdyt, qxt)
        ctx.qx = ctx.qw = None
        return dx.to(x.dtype), dw.to(w.dtype), None


class ReferenceFP8Linear(nn.Module):
    """Drop-in for a bias-free or biased nn.Linear, sharing its Parameters."""

    def __init__(self, in_features: int, out_features: int, recipe: Recipe, name: str = ""):
        super().__init__()
        self.in_features, self.out_features, self.name = in_features, out_features, name
        self.recipe = get_recipe(recipe)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = None
        self.observer = None  # callable(name, role, stats) on monitored steps
        self._record_amax = False
        if self.recipe.scaling == "delayed":
            r = self.recipe
            self.hist = nn.ModuleDict({role: AmaxHistory(r.amax_history_len, r.amax_compute_algo, r.margin)
                                       for role in ROLES})

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe, name: str) -> "ReferenceFP8Linear":
        mod = cls(linear.in_features, linear.out_features, recipe, name).to(linear.weight.device)
        mod.weight = linear.weight  # the same Parameter: optimizer state survives the swap
        mod.bias = linear.bias
        return mod

    def to_linear(self) -> nn.Linear:
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight, lin.bias = self.weight, self.bias
        return lin

    def quantize_role(self, x: torch.Tensor, role: str) -> Quantized:
        hist = self.hist[role] if self.recipe.scaling == "delayed" else None
        xf = x.float()
        q = quantize(xf, self.recipe, role, history=hist)
        if hist is not None and (role == "grad_output" or self._record_amax):
            hist.update(tile_amax(xf, None), used_scale=q.scale)
        if self.observer is not None:
            self.observer(self.name, role, quant_stats(xf, q, FORMATS[self.recipe.format_for(role)]))
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device.type
        if torch.is_autocast_enabled(dev):
            # Activations live in the autocast dtype; quantize them from there (as torchao does).
            out_dtype = torch.get_autocast_dtype(dev)
            x = x.to(out_dtype)
        else:
            out_dtype = x.dtype
        shape = x.shape
        # Grad mode is off inside autograd.Function.forward, so decide here whether this
        # forward is a training step that should advance the delayed-scaling histories.
        self._record_amax = self.training and torch.is_grad_enabled()
        with torch.autocast(dev, enabled=False):
            y = _FP8LinearFn.apply(x.reshape(-1, shape[-1]), self.weight, self)
            if self.bias is not None:
                y = y + self.bias.float()
        return y.to(out_dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        r = self.recipe
        return f"{self.in_features}, {self.out_features}, recipe={r.name} ({r.scaling}, {r.fwd_format}/{r.grad_format})"
