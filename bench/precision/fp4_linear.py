"""The reference FP4 fake-quant linear: y = x Wᵀ (+ b) with the FP4 recipe's casts on all three GEMMs.

Each GEMM operand is quantized along *that GEMM's* reduction dim (a block scale must be constant
along it, or it would not factor out of the dot products; see bench/precision/linear.py), always
from the high-precision x and W saved in forward (TE quantizes the rowwise and the columnwise copy
from the same high-precision tensor, never one from the other):
  fprop  y  = x  · Wᵀ  reduces over K: x [M,K] role input, 1x16 along K; W [N,K] role weight,
                       16x16 tiles (nvfp4 weight_2d) or 1xB along K
  dgrad  dx = dy · W   reduces over N: dy [M,N] role grad_output along N (stochastic rounding when
                       on); Wᵀ [K,N] role weight along N. A 16x16 tile of Wᵀ is a tile of W with the
                       same global scale, so W's forward quantization serves dgrad transposed
  wgrad  dW = dyᵀ · x  reduces over M (tokens): dyᵀ [N,M] role grad_output (SR when on) and xᵀ
                       [K,M] role input, both along M, both through the random Hadamard transform
                       along M when `rht` is on (T·Tᵀ = I, so the product is unchanged before
                       quantization); each operand's global amax is taken after the transform
                       (TE's with_post_rht_amax). M is zero-padded to a multiple of the block:
                       zero tokens add nothing to dW, and a zero-padded block quantizes its real
                       elements exactly as a partial block would
nvfp4 defaults follow TE's NVFP4BlockScaling (weight_2d, rht, stochastic_rounding all on; RHT on
the wgrad operands only, SR on the gradient only); mxfp4 defaults are plain OCP MX (see
bench/precision/fp4.py). The GEMMs multiply the dequantized operands in fp32: what a block-scaled
FP4 GEMM computes up to accumulation order. Bias is added in fp32 after the GEMM, never quantized.

Stochastic rounding draws from a generator seeded by (sr_seed, sr_calls), sr_calls a buffer that
counts backward passes: the draws are reproducible, and a resumed checkpoint continues the same
sequence. The observer (the numerics monitor) receives fp4_quant_stats for input and weight in
forward and for grad_output (the dgrad operand) in backward, as the FP8 linear's does.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.core.errors import BadInput
from bench.precision.fp4 import FP4Quantized, FP4Recipe, get_fp4_recipe, quantize_fp4, validate_fp4_linear
from bench.precision.fp4_stats import fp4_quant_stats
from bench.precision.hadamard import rht



def _pad_cols(t: torch.Tensor, mult: int) -> torch.Tensor:
    return F.pad(t, (0, -t.shape[1] % mult))


class _FP4LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, mod):
        qx = mod.quantize_operand(x, "input", "fprop")
        qw = mod.quantize_operand(weight, "weight", "fprop")
        ctx.mod, ctx.x_dtype, ctx.w_dtype = mod, x.dtype, weight.dtype
        ctx.save_for_backward(x, weight)
        return qx.dequantize() @ qw.dequantize().t()

    @staticmethod
    def backward(ctx, dy):
        mod = ctx.mod
        r: FP4Recipe = mod.recipe
        x, w = ctx.saved_tensors
        dy = dy.float()
        gen = mod.next_generator(dy.device) if r.stochastic_rounding else None
        qdy = mod.quantize_operand(dy, "grad_output", "dgrad", generator=gen)  # along N
        dx = dw = None
        if ctx.needs_input_grad[0]:
            qwt = mod.quantize_operand(w.t(), "weight", "dgrad")                # Wᵀ along N
            dx = (qdy.dequantize() @ qwt.dequantize().t()).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            dyt = _pad_cols(dy.t(), r.block)                                     # [N, M'] along M
            xt = _pad_cols(x.detach().float().t(), r.block)                      # [K, M'] along M
            if r.rht:
                dyt, xt = rht(dyt), rht(xt)
            qa = mod.quantize_operand(dyt, "grad_output", "wgrad", generator=gen)
            qb = mod.quantize_operand(xt, "input", "wgrad")
            dw = (qa.dequantize() @ qb.dequantize().t()).to(ctx.w_dtype)
        return dx, dw, None


class ReferenceFP4Linear(nn.Module):
    """Drop-in replacement for nn.Linear running an FP4 recipe's fake-quant casts (module
    docstring). `from_linear` shares the original Parameters (optimizer state survives the swap,
    `to_linear` hands them back for the fallback policy). `observer(name, role, stats)` as in the
    FP8 linear; `operand_hook(gemm, role, x, q)`, when set, sees every quantized GEMM operand
    (gemm in fprop/dgrad/wgrad; x the high-precision operand as quantized, after padding and
    RHT) for tests and debugging."""

    def __init__(self, in_features: int, out_features: int, recipe="nvfp4", name: str = "", bias: bool = True,
                 device=None, dtype=None, sr_seed: int = 0):
        super().__init__()
        self.recipe: FP4Recipe = get_fp4_recipe(recipe)
        if (why := validate_fp4_linear(self.recipe, out_features, in_features)):
            raise BadInput(f"{name or 'Linear'} [{out_features}x{in_features}] cannot run {self.recipe.name}: {why}")
        self.in_features, self.out_features, self.name = in_features, out_features, name
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        if self.weight.device.type != "meta":
            self.reset_parameters()
        self.sr_seed = int(sr_seed)
        self.register_buffer("sr_calls", torch.zeros((), dtype=torch.long, device="cpu"))
        self.observer = None
        self.operand_hook = None

    def reset_parameters(self) -> None:  # nn.Linear's initialisation
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe, name: str, sr_seed: int = 0) -> "ReferenceFP4Linear":
        mod = cls(linear.in_features, linear.out_features, recipe, name, bias=False, device="meta", sr_seed=sr_seed)
        mod.weight, mod.bias = linear.weight, linear.bias  # the same Parameter objects
        mod.train(linear.training)
        return mod

    def to_linear(self) -> nn.Linear:
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight, lin.bias = self.weight, self.bias
        lin.train(self.training)
        return lin

    def next_generator(self, device) -> torch.Generator:
        """A fresh generator for one backward pass's stochastic rounding, seeded from
        (sr_seed, sr_calls); advances sr_calls."""
        g = torch.Generator(device=device)
        g.manual_seed((self.sr_seed * 1_000_003 + int(self.sr_calls)) % (2 ** 63))
        self.sr_calls += 1
        return g

    def quantize_operand(self, t: torch.Tensor, role: str, gemm: str, generator=None) -> FP4Quantized:
        """Quantize one GEMM operand [rows, reduction] in this role; SR only for gradients when the
        recipe asks. Reports the fprop input/weight and the dgrad grad_output to the observer."""
        stochastic = role == "grad_output" and self.recipe.stochastic_rounding
        q = quantize_fp4(t, self.recipe, role, stochastic=stochastic, generator=generator)
        if self.operand_hook is not None:
            self.operand_hook(gemm, role, t, q)
        if self.observer is not None and (gemm == "fprop" or (gemm, role) == ("dgrad", "grad_output")):
            self.observer(self.name, role, fp4_quant_stats(t, q))
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device.type
        if torch.is_autocast_enabled(dev):  # quantize from the autocast dtype, return it (as FP8 linear)
            out_dtype = torch.get_autocast_dtype(dev)
            x = x.to(out_dtype)
        else:
            out_dtype = x.dtype
        lead = x.shape[:-1]
        with torch.autocast(dev, enabled=False):
            y = _FP4LinearFn.apply(x.reshape(-1, x.shape[-1]), self.weight, self)
            if self.bias is not None:
                y = y + self.bias.float()
        return y.to(out_dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        r = self.recipe
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"recipe={r.name} (weight_2d={r.weight_2d}, rht={r.rht}, sr={r.stochastic_rounding})")


def convert_to_fp4(model: nn.Module, recipe, names, sr_seed: int = 0) -> None:
    """Swap the Linears `names` (dotted) of `model` for ReferenceFP4Linear (the engine's convert);
    each module's SR stream is seeded from sr_seed and its position in `names`."""
    r = get_fp4_recipe(recipe)
    for i, n in enumerate(names):
        model.set_submodule(n, ReferenceFP4Linear.from_linear(model.get_submodule(n), r, n, sr_seed=sr_seed * 7919 + i))
