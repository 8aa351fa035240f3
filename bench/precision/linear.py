"""The reference FP8 linear: y = x Wᵀ (+ b) with the recipe's casts on all three GEMMs.

  forward  y  = x  · Wᵀ   reduces over K: x [M,K] (role input) and W [N,K] (role weight), both
                          quantized along K in the forward format (E4M3)
  dgrad    dx = dy · W    reduces over N: dy [M,N] (role grad_output, grad format) and Wᵀ [K,N]
                          (role weight), both along N
  wgrad    dW = dyᵀ · x   reduces over M (tokens): dyᵀ [N,M] (grad_output) and xᵀ [K,M] (input),
                          both along M
A scale must be constant along its GEMM's reduction dim (within a tile), or 1/s would not factor
out of the dot products: Σ_k (q_a[k]/s_a)(q_b[k]/s_b) = (1/(s_a s_b)) Σ_k q_a[k] q_b[k] needs
s_a, s_b independent of k. Hence:
  * per-tensor scales (tensorwise, delayed) are constant along every dim, so the fp8 x and W
    from forward are reused transposed in backward, and dy is quantized once for both backward
    GEMMs. Only the fp8 data and the scalar scales are saved: the activation memory saving that
    Transformer Engine and torchao tensorwise get from FP8.
  * row-, tile- and MX-scaled operands are not: x quantized with 1x128 tiles along K has scales
    that vary along M, the reduction dim of wgrad. So each backward GEMM re-quantizes its
    operands along its own reduction dim from the high-precision x and W saved in forward
    (what torchao rowwise, TE blockwise/MXFP8 and DeepSeek-V3 do; re-quantizing the fp8 copy
    instead would stack a second rounding on the first). The 128x128 weight block is square,
    so W's blocks are Wᵀ's: re-quantizing Wᵀ gives exactly W's fp8 data transposed.
GEMMs: bench.precision.gemm.scaled_gemm, the one dispatcher the generator uses too
(torch._scaled_mm where the scales factor out of the dot products, else dequantized operands in
fp32; fast accumulation only in the CUDA forward, where its lower-precision accumulator is
tolerated). Bias is added in fp32 after the GEMM (a fused epilogue), never quantized.
Overflow accounting: every cast of a training step (the three roles in forward and backward,
and the backward re-quantizations; not eval or no-grad forwards, whose casts belong to no
optimizer step) adds its clamped-element count to a device counter per role, with no host sync; `pop_clamp_counts` hands them to the monitor once per step, so a saturating cast is seen
on the step it happens, not only on the monitor's sampled steps.
Delayed-scaling histories move only in training (module.training and grad enabled in forward;
every backward), so evaluation and no-grad rollouts never change the scales. Activation
checkpointing would re-run the forward and record its amaxes twice: not supported.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from bench.precision.formats import FORMATS
from bench.precision.gemm import scaled_gemm
from bench.precision.quantize import AmaxHistory, Quantized, quantize, tile_amax
from bench.precision.recipes import ROLES, ScalingRecipe, get_recipe
from bench.precision.stats import quant_stats


class _FP8LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, mod):
        r = mod.recipe
        qx = mod.quantize_role(x, "input")
        qw = mod.quantize_role(weight, "weight")
        y = scaled_gemm(qx, qw, fast_accum=r.fast_accum, use_scaled_mm=mod.use_scaled_mm)
        ctx.mod, ctx.x_dtype, ctx.w_dtype = mod, x.dtype, weight.dtype
        if r.per_tensor:  # fp8 copies + scalar scales are all backward needs
            ctx.save_for_backward(qx.data, qx.scale, qw.data, qw.scale)
        else:             # backward re-quantizes along other dims: keep high precision
            ctx.save_for_backward(x, weight)
        return y

    @staticmethod
    def backward(ctx, dy):
        mod = ctx.mod
        r, mm = mod.recipe, mod.use_scaled_mm
        dy = dy.float()
        qdy = mod.quantize_role(dy, "grad_output")  # [M,N] along N: dgrad's operand, the one reported
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if r.per_tensor:
            xd, xs, wd, ws = ctx.saved_tensors
            fmt = FORMATS[r.fwd_format]
            qx, qw = Quantized(xd, xs, None, fmt), Quantized(wd, ws, None, fmt)
            dx = scaled_gemm(qdy, qw.t(), use_scaled_mm=mm) if need_dx else None   # W reused as Wᵀ
            dw = scaled_gemm(qdy.t(), qx.t(), use_scaled_mm=mm) if need_dw else None
        else:
            x, w = ctx.saved_tensors
            dx = scaled_gemm(qdy, mod.requantize(w.t(), "weight"), use_scaled_mm=mm) if need_dx else None
            dw = (scaled_gemm(mod.requantize(dy.t(), "grad_output"), mod.requantize(x.t(), "input"), use_scaled_mm=mm)
                  if need_dw else None)
        return (None if dx is None else dx.to(ctx.x_dtype), None if dw is None else dw.to(ctx.w_dtype), None)


class ReferenceFP8Linear(nn.Module):
    """Drop-in replacement for nn.Linear running the recipe's FP8 casts (see module docstring).

    `from_linear` shares the original Parameter objects, so optimizer state survives the swap and
    `to_linear` hands the same Parameters back (the fallback policy's switch to high precision).
    Delayed scaling keeps one AmaxHistory per role in buffers (`hist.<role>.*` in state_dict), so a
    checkpoint restores the exact scales. `observer`, when set, is called as
    observer(name, role, stats) after each role's first quantization in a step (input and weight
    in forward, grad_output in backward), with quant_stats of the actual tensor and the scales
    actually used: for fp8_delayed that is the stale history scale, so saturation shows."""

    def __init__(self, in_features: int, out_features: int, recipe, name: str = "", bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.name = in_features, out_features, name
        self.recipe: ScalingRecipe = get_recipe(recipe)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        self.observer = None        # callable(name, role, stats) or None
        self.use_scaled_mm = True   # False forces the dequantize-and-matmul path (tests, debugging)
        self._record_amax = False
        self.hist = self._make_histories(device)
        self._reset_clamp_counts()

    def _make_histories(self, device) -> nn.ModuleDict | None:
        r = self.recipe
        if r.scaling != "delayed":
            return None
        return nn.ModuleDict({role: AmaxHistory(r.amax_history_len, r.amax_compute_algo, r.margin)
                              for role in ROLES}).to(device)

    def reset_parameters(self) -> None:  # nn.Linear's initialisation
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe, name: str) -> "ReferenceFP8Linear":
        mod = cls(linear.in_features, linear.out_features, recipe, name, bias=False, device="meta")
        mod.weight = linear.weight  # the same Parameter objects: optimizer state survives the swap
        mod.bias = linear.bias
        mod.hist = mod._make_histories(linear.weight.device)
        mod._reset_clamp_counts()
        mod.train(linear.training)
        return mod

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear holding the same Parameters (and dropping the FP8 state)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight, lin.bias = self.weight, self.bias
        lin.train(self.training)
        return lin

    def _reset_clamp_counts(self) -> None:
        self._clamped: dict[str, torch.Tensor] = {}  # role -> device count of clipped elements
        self._cast_numel: dict[str, int] = {}        # role -> elements cast (shapes: no sync)

    def _count(self, role: str, q: Quantized, numel: int) -> None:
        if q.clamped is None:
            return
        prev = self._clamped.get(role)
        self._clamped[role] = q.clamped if prev is None else prev + q.clamped
        self._cast_numel[role] = self._cast_numel.get(role, 0) + numel

    def pop_clamp_counts(self) -> dict[str, tuple[torch.Tensor, int]]:
        """{role: (clamped elements as a 0-d device tensor, elements cast)} over every cast since
        the last call, and reset. Reading the tensors is the caller's (one sync per step)."""
        out = {r: (c, self._cast_numel[r]) for r, c in self._clamped.items()}
        self._reset_clamp_counts()
        return out

    def requantize(self, x: torch.Tensor, role: str) -> Quantized:
        """A backward re-quantization along another dim (current scaling, no history, not
        reported to the observer, whose stats describe each role's first cast): counted."""
        q = quantize(x, self.recipe, role)
        self._count(role, q, x.numel())
        return q

    def quantize_role(self, x: torch.Tensor, role: str) -> Quantized:
        """Quantize one GEMM operand for `role` along its last dim; for delayed scaling use the
        history's scale and then (update after use) record this amax; report to the observer."""
        hist = self.hist[role] if self.hist is not None else None
        q = quantize(x, self.recipe, role, history=hist)
        training = role == "grad_output" or self._record_amax
        if training:  # eval and rollout-scoring forwards are not a training step's casts
            self._count(role, q, x.numel())
        if hist is not None and training:
            hist.update(tile_amax(x.detach().float(), None), used_scale=q.scale)
        if self.observer is not None:
            self.observer(self.name, role, quant_stats(x, q))
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device.type
        if torch.is_autocast_enabled(dev):
            # Under autocast activations live in the autocast dtype: quantize from there (as
            # torchao does) and return that dtype, as an autocast nn.Linear would.
            out_dtype = torch.get_autocast_dtype(dev)
            x = x.to(out_dtype)
        else:
            out_dtype = x.dtype
        lead = x.shape[:-1]
        # Grad mode is off inside autograd.Function.forward: decide here whether this is a
        # training forward that should advance the delayed-scaling histories.
        self._record_amax = self.training and torch.is_grad_enabled()
        with torch.autocast(dev, enabled=False):
            y = _FP8LinearFn.apply(x.reshape(-1, x.shape[-1]), self.weight, self)
            if self.bias is not None:
                y = y + self.bias.float()
        return y.to(out_dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        r = self.recipe
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"recipe={r.name} ({r.scaling}, {r.fwd_format}/{r.grad_format})")
