"""The reference fake-quant training linear, one for every format: y = x Wᵀ (+ b) with the recipe's
casts on all three GEMMs. The format (bench/precision/formats/base.py) supplies the casts and the
few places where formats differ (reuses_casts, histories, stochastic, wgrad_operands).

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
    FP4 (nvfp4, mxfp4) is always re-quantized from the high-precision tensors, as TE does (the
    rowwise and the columnwise copy come from the same high-precision tensor, never one from
    the other): fprop x 1x16 (1x32) along K and W in 16x16 tiles (nvfp4 weight_2d) or 1xB; dgrad
    dy (stochastic rounding when on) and Wᵀ along N; wgrad dyᵀ (SR when on) and xᵀ along M, M
    zero-padded to a multiple of the block and both through the random Hadamard transform along
    M when `rht` is on (T·Tᵀ = I, so the product is unchanged before quantization); each
    operand's global amax is taken after the transform (TE's with_post_rht_amax). nvfp4 defaults
    follow TE's NVFP4BlockScaling (RHT on the wgrad operands only, SR on the gradient only).
GEMMs: bench.precision.linears.gemm.scaled_gemm, the one dispatcher the generator uses too
(torch._scaled_mm where the scales factor out of the dot products, else dequantized operands in
fp32; fast accumulation only in the CUDA forward, where its lower-precision accumulator is
tolerated; FP4 operands are always dequantized: what a block-scaled FP4 GEMM computes up to
accumulation order). Bias is added in fp32 after the GEMM (a fused epilogue), never quantized.
Overflow accounting: every cast of a training step (the three roles in forward and backward,
and the backward re-quantizations; not eval or no-grad forwards, whose casts belong to no
optimizer step) adds its clamped-element count (formats that count them: FP8) to a device counter
per role, with no host sync; `pop_clamp_counts` hands them to the monitor once per step, so a
saturating cast is seen on the step it happens, not only on the monitor's sampled steps.
Stochastic rounding (formats with `sr_stream`: FP4) draws from a generator seeded by (sr_seed,
sr_calls), sr_calls a buffer that counts backward passes: the draws are reproducible, and a
resumed checkpoint continues the same sequence.
Delayed-scaling histories move only in training (module.training and grad enabled in forward;
every backward), so evaluation and no-grad rollouts never change the scales. Activation
checkpointing would re-run the forward and record its amaxes twice: not supported.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from bench.core.errors import BadInput
from bench.precision.formats.base import format_of, quantize
from bench.precision.linears.gemm import scaled_gemm
from bench.precision.recipes import ScalingRecipe, get_recipe
from bench.precision.stats import quant_stats


class _ReferenceLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, mod):
        r, fmt = mod.recipe, mod.format
        qx = mod.quantize_operand(x, "input", "fprop")
        qw = mod.quantize_operand(weight, "weight", "fprop")
        y = scaled_gemm(qx, qw, fast_accum=r.fast_accum, use_scaled_mm=mod.use_scaled_mm)
        ctx.mod, ctx.x_dtype, ctx.w_dtype = mod, x.dtype, weight.dtype
        ctx.reuse = fmt.reuses_casts(r)
        if ctx.reuse:  # the casts + their scales are all backward needs
            ctx.n_x = len(px := fmt.pack(qx))
            ctx.save_for_backward(*px, *fmt.pack(qw))
        else:          # backward re-quantizes along other dims: keep high precision
            ctx.save_for_backward(x, weight)
        return y

    @staticmethod
    def backward(ctx, dy):
        mod = ctx.mod
        r, fmt, mm = mod.recipe, mod.format, mod.use_scaled_mm
        dy = dy.float()
        gen = mod.next_generator(dy.device) if fmt.stochastic(r, "grad_output") else None
        qdy = mod.quantize_operand(dy, "grad_output", "dgrad", generator=gen)  # [M,N] along N: the one reported
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if ctx.reuse:
            saved = ctx.saved_tensors
            qx = fmt.unpack(r, "input", *saved[:ctx.n_x])
            qw = fmt.unpack(r, "weight", *saved[ctx.n_x:])
            dx = scaled_gemm(qdy, qw.t(), use_scaled_mm=mm) if need_dx else None   # W reused as Wᵀ
            dw = scaled_gemm(qdy.t(), qx.t(), use_scaled_mm=mm) if need_dw else None
        else:
            x, w = ctx.saved_tensors
            dx = dw = None
            if need_dx:
                dx = scaled_gemm(qdy, mod.quantize_operand(w.t(), "weight", "dgrad"), use_scaled_mm=mm)
            if need_dw:
                dyt, xt = fmt.wgrad_operands(r, dy.t(), x.t())                     # along M
                qa = mod.quantize_operand(dyt, "grad_output", "wgrad", generator=gen)
                dw = scaled_gemm(qa, mod.quantize_operand(xt, "input", "wgrad"), use_scaled_mm=mm)
        return (None if dx is None else dx.to(ctx.x_dtype), None if dw is None else dw.to(ctx.w_dtype), None)


class ReferenceLinear(nn.Module):
    """Drop-in replacement for nn.Linear running the recipe's casts, any format (module docstring).

    `from_linear` shares the original Parameter objects, so optimizer state survives the swap and
    `to_linear` hands the same Parameters back (the fallback policy's switch to high precision).
    Delayed scaling keeps one AmaxHistory per role in buffers (`hist.<role>.*` in state_dict), so a
    checkpoint restores the exact scales; formats with a stochastic-rounding stream keep `sr_calls`.
    `observer`, when set, is called as observer(name, role, stats) after each role's first
    quantization in a step (input and weight in forward, grad_output in backward), with
    bench.precision.stats.quant_stats of the actual tensor and the scales actually used: for
    fp8_delayed that is the stale history scale, so saturation shows. `operand_hook(gemm, role, x,
    q)`, when set, sees every operand quantized (gemm in fprop/dgrad/wgrad; x as quantized, after
    padding and RHT) for tests and debugging."""

    def __init__(self, in_features: int, out_features: int, recipe, name: str = "", bias: bool = True,
                 device=None, dtype=None, sr_seed: int = 0):
        super().__init__()
        self.recipe: ScalingRecipe = get_recipe(recipe)
        self.format = format_of(self.recipe)
        self.format.check(self.recipe)
        if self.format.strict_shapes and (why := self.format.linear_error(self.recipe, out_features, in_features)):
            raise BadInput(f"{name or 'Linear'} [{out_features}x{in_features}] cannot run {self.recipe.name}: {why}")
        self.in_features, self.out_features, self.name = in_features, out_features, name
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        if self.weight.device.type != "meta":
            self.reset_parameters()
        self.observer = None        # callable(name, role, stats) or None
        self.operand_hook = None    # callable(gemm, role, x, q) or None
        self.use_scaled_mm = True   # False forces the dequantize-and-matmul path (tests, debugging)
        self._record_amax = False
        self.hist = self._make_histories(device)
        self.sr_seed = int(sr_seed)
        if self.format.sr_stream:
            self.register_buffer("sr_calls", torch.zeros((), dtype=torch.long, device="cpu"))
        self._reset_clamp_counts()

    def _make_histories(self, device) -> nn.ModuleDict | None:
        h = self.format.histories(self.recipe)
        return None if h is None else nn.ModuleDict(h).to(device)

    def reset_parameters(self) -> None:  # nn.Linear's initialisation
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe, name: str, sr_seed: int = 0) -> "ReferenceLinear":
        mod = cls(linear.in_features, linear.out_features, recipe, name, bias=False, device="meta", sr_seed=sr_seed)
        mod.weight = linear.weight  # the same Parameter objects: optimizer state survives the swap
        mod.bias = linear.bias
        mod.hist = mod._make_histories(linear.weight.device)
        mod.train(linear.training)
        return mod

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear holding the same Parameters (and dropping the quantization state)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight, lin.bias = self.weight, self.bias
        lin.train(self.training)
        return lin

    def _reset_clamp_counts(self) -> None:
        self._clamped: dict[str, torch.Tensor] = {}  # role -> device count of clipped elements
        self._cast_numel: dict[str, int] = {}        # role -> elements cast (shapes: no sync)

    def _count(self, role: str, q, numel: int) -> None:
        if getattr(q, "clamped", None) is None:
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

    def next_generator(self, device) -> torch.Generator:
        """A fresh generator for one backward pass's stochastic rounding, seeded from
        (sr_seed, sr_calls); advances sr_calls."""
        g = torch.Generator(device=device)
        g.manual_seed((self.sr_seed * 1_000_003 + int(self.sr_calls)) % (2 ** 63))
        self.sr_calls += 1
        return g

    def quantize_operand(self, t: torch.Tensor, role: str, gemm: str, generator=None):
        """Quantize one GEMM operand [rows, reduction] for `role`. The role's first cast of a step
        (fprop input and weight, dgrad grad_output) uses the delayed-scaling history's scale and
        then (update after use) records this amax, and is reported to the observer; the backward
        re-quantizations along other dims use current scaling and are not. Every training cast is
        counted (eval and rollout-scoring forwards are not a training step's casts)."""
        first = gemm == "fprop" or (gemm, role) == ("dgrad", "grad_output")
        hist = self.hist[role] if self.hist is not None and first else None
        stochastic = self.format.stochastic(self.recipe, role)
        q = quantize(t, self.recipe, role, history=hist, stochastic=stochastic, generator=generator)
        training = gemm != "fprop" or self._record_amax
        if training:
            self._count(role, q, t.numel())
        if hist is not None and training:
            hist.update(t.detach().float().abs().amax(), used_scale=q.scale)
        if self.operand_hook is not None:
            self.operand_hook(gemm, role, t, q)
        if self.observer is not None and first:
            self.observer(self.name, role, quant_stats(t, q))
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
            y = _ReferenceLinearFn.apply(x.reshape(-1, x.shape[-1]), self.weight, self)
            if self.bias is not None:
                y = y + self.bias.float()
        return y.to(out_dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        r = self.recipe
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"recipe={r.name} ({r.scaling}, {r.fwd_format}/{r.grad_format})")


def convert_reference(model: nn.Module, recipe, names, sr_seed: int = 0) -> None:
    """Swap the Linears `names` (dotted) of `model` for ReferenceLinear (the reference engine's
    convert); each module's stochastic-rounding stream is seeded from sr_seed and its position."""
    r = get_recipe(recipe)
    for i, n in enumerate(names):
        model.set_submodule(n, ReferenceLinear.from_linear(model.get_submodule(n), r, n, sr_seed=sr_seed * 7919 + i))
