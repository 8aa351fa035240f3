"""The quantized-format interface and its one registry: every consumer (the reference training
linear, the inference linear, the stats, the planner, the engines, `fake_quantize`) asks the
format of a recipe, never the recipe's name.

A *format* (`QuantFormat`) implements one or more scalings (`ScalingRecipe.scaling`): fp8.py the
five FP8 scalings (delayed, tensorwise, rowwise, blockwise, mx), nvfp4.py and mxfp4.py one each.
What it provides, for an operand x [rows, K] quantized along K (K = its GEMM's reduction dim):
  quantize(x, recipe, role, history, stochastic, generator) -> q, the cast; q.dequantize() = x̂
  tile(recipe, role, shape)          block geometry: the (rows, cols) sharing one scale (None =
                                     the whole tensor)
  q.stat_terms(...), q.zeros(x̂)      the format's part of the stats of one cast (bench.precision.stats)
  linear_error(recipe, out, in)      why a Linear [out, in] cannot run it (the planner's shape rule)
  and the training linear's hooks, each the identity/off by default:
  reuses_casts(recipe)   the scales are constant along every dim (per tensor), so the forward's
                         casts serve both backward GEMMs transposed (pack/unpack save them)
  histories(recipe)      per-role state that makes a scale (delayed scaling's amax histories)
  stochastic(recipe, role)  whether this role's backward casts round stochastically (then the
                         linear keeps a seeded stream: `sr_stream`)
  wgrad_operands(recipe, dyᵀ, xᵀ)  a transform of the wgrad operands (FP4: pad M, Hadamard)
The contract of `quantize`: a scale must be constant along the reduction dim within a tile, so
1/s factors out of each partial dot product Σ_k (q_a[k]/s_a)(q_b[k]/s_b) = (1/(s_a·s_b)) Σ_k q_a q_b.

Registration (`register_format(fmt)`): the format's scalings dispatch `quantize` to its
quantizer, and its recipes join the one recipe registry (bench.precision.recipes.RECIPES). A
scaling that only registers a quantizer (`register_quantizer`, the lower-level hook) runs with
the FP8 format's linear behaviour (tile scales, re-quantized backward), `DEFAULT_FORMAT`.
"""
from __future__ import annotations

from typing import Callable

import torch

from bench.precision.recipes import ROLES, ScalingRecipe, get_recipe, register_recipe

Tile = tuple[int, int]


class QuantFormat:
    """The interface (module docstring). Subclasses set the class attributes and implement
    `quantize` and `tile`; the linears' hooks default to a plain cast."""
    name = "format"
    scalings: tuple[str, ...] = ()
    stat_keys: tuple[str, ...] = ()
    inference_kind = ("W8A8", "W8A16")  # the generator linear's label (activations cast, weights only)
    strict_shapes = False   # quantize refuses partial blocks: the linears check shapes at construction
    sr_stream = False       # the training linear keeps a seeded stochastic-rounding stream (sr_calls)
    gpu_reason: str | None = None  # why no GPU engine here (te, torchao) runs it; None: they decide
    keeps_codes = True      # the inference linear keeps the quantized weight beside x̂_W (FP8: its
                            # bytes, a quarter of x̂_W; FP4's emulated codes are fp32: dropped)

    def check(self, recipe: ScalingRecipe) -> None:
        """Raise BadInput for knob values this format refuses (run at a linear's construction)."""

    def quantize(self, x: torch.Tensor, recipe: ScalingRecipe, role: str, history=None, *,
                 stochastic: bool = False, generator: torch.Generator | None = None):
        raise NotImplementedError

    def tile(self, recipe: ScalingRecipe, role: str, shape) -> Tile | None:
        raise NotImplementedError

    def linear_error(self, recipe: ScalingRecipe, out_features: int, in_features: int) -> str | None:
        return None

    def reuses_casts(self, recipe: ScalingRecipe) -> bool:
        return False

    def pack(self, q) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def unpack(self, recipe: ScalingRecipe, role: str, *tensors):
        raise NotImplementedError

    def histories(self, recipe: ScalingRecipe) -> dict | None:
        return None

    def stochastic(self, recipe: ScalingRecipe, role: str) -> bool:
        return False

    def wgrad_operands(self, recipe: ScalingRecipe, dyt: torch.Tensor, xt: torch.Tensor):
        return dyt, xt


FORMAT_OF: dict[str, QuantFormat] = {}  # scaling -> its format
DEFAULT_FORMAT: list[QuantFormat] = []  # [the FP8 format], for scalings registered by quantizer only
QuantizerFn = Callable[..., object]
QUANTIZERS: dict[str, QuantizerFn] = {}


def register_quantizer(scaling: str, fn: QuantizerFn) -> None:
    """The quantizer for one scaling: fn(x [rows, K] (any float dtype), recipe, role, history,
    **{stochastic, generator} when asked) -> a quantized tensor with .dequantize(). `quantize`
    validates its arguments and dispatches here, so every consumer (the reference linear, the
    inference linear, the monitor, fake_quantize) runs a new scaling once it is registered."""
    QUANTIZERS[scaling] = fn


def register_format(fmt: QuantFormat, recipes: dict[str, dict] | None = None) -> QuantFormat:
    """Make `fmt` the format of its scalings and register its named recipes:
    recipes = {name: dict(scaling=..., fwd_format=..., grad_format=..., **knobs)}."""
    for s in fmt.scalings:
        FORMAT_OF[s] = fmt
        register_quantizer(s, fmt.quantize)
    for name, fields in (recipes or {}).items():
        fields = dict(fields)
        register_recipe(name, fields.pop("scaling"), fields.pop("fwd_format"), fields.pop("grad_format"), **fields)
    return fmt


def format_of(recipe) -> QuantFormat:
    """The format that runs this recipe (a name, a ScalingRecipe or a mapping)."""
    r = get_recipe(recipe)
    return FORMAT_OF.get(r.scaling) or DEFAULT_FORMAT[0]


def quantize(x: torch.Tensor, recipe, role: str = "input", history=None, *, stochastic: bool = False,
             generator: torch.Generator | None = None):
    """Quantize a 2-D tensor [rows, K] (K = the GEMM reduction dim) with the recipe's scaling for
    this role. `history` (delayed scaling only) is read, not updated: updating after use is the
    caller's. `stochastic` rounds stochastically (formats that support it), drawing from `generator`."""
    recipe = get_recipe(recipe)
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
    if x.dim() != 2:
        raise ValueError(f"quantize expects a 2-D [rows, K] tensor, got shape {tuple(x.shape)}")
    fn = QUANTIZERS.get(recipe.scaling)
    if fn is None:
        raise ValueError(f"no quantizer registered for scaling {recipe.scaling!r} ({recipe.name}); "
                         f"registered: {', '.join(QUANTIZERS)}")
    if stochastic or generator is not None:
        return fn(x, recipe, role, history, stochastic=stochastic, generator=generator)
    return fn(x, recipe, role, history)


def fake_quantize(x: torch.Tensor, recipe, role: str = "input") -> torch.Tensor:
    """DESIGN.md §10: the dequantized x̂ the recipe's GEMM would consume, x [rows, K].

    Returns fp32 whatever x's dtype: x̂ = q / s generally has more significant bits than bf16 or
    fp16 hold (q has 4 bits, s is an arbitrary fp32), and fp32 is what the emulated GEMM consumes;
    cast it yourself if you need x's dtype. Not differentiable (x is detached). fp8_delayed is
    taken as of a first step: the history holds only the current amax, i.e. current scaling with
    margin. role "grad_output" is accepted too (grad_format and activation tiling). FP4 recipes:
    the tensor's own global scale, round to nearest even, no Hadamard transform."""
    return quantize(x, recipe, role).dequantize()


def validate_shape(recipe, out_features: int, in_features: int) -> str | None:
    """Why a Linear [out_features, in_features] cannot run this recipe, or None if it can (the
    format's rule: fp8.py, e2m1.py). The token dim M is padded by the engines and not checked."""
    r = get_recipe(recipe)
    return format_of(r).linear_error(r, out_features, in_features)


def unsupported_linear(model, recipe, names) -> str | None:
    """The first of the Linears `names` (dotted, in `model`) that `recipe` cannot run, as
    '<name> [out x in] cannot run <recipe>: <why>', or None when all of them can."""
    r = get_recipe(recipe)
    for name in names:
        mod = model.get_submodule(name)
        if (reason := validate_shape(r, mod.out_features, mod.in_features)):
            return f"{name} [{mod.out_features}x{mod.in_features}] cannot run {r.name}: {reason}"
    return None
