"""Scaling recipe definitions (DESIGN.md §5): the knobs, and the one registry of named recipes. The
FP8 defaults are listed here; every other format registers its own next to its quantizer
(bench/precision/formats/nvfp4.py and mxfp4.py: nvfp4, mxfp4, E2M1 elements).

| name           | scaling    | granularity                                  | fwd / grad  |
|----------------|------------|----------------------------------------------|-------------|
| fp8_delayed    | delayed    | per tensor, scale from an amax history       | E4M3 / E5M2 |
| fp8_tensorwise | tensorwise | per tensor, this tensor's amax               | E4M3 / E5M2 |
| fp8_rowwise    | rowwise    | per row along the GEMM's reduction dim, 2^k  | E4M3 / E4M3 |
| fp8_blockwise  | blockwise  | 1x128 activation/grad tiles, 128x128 weights | E4M3 / E4M3 |
| mxfp8          | mx         | 1x32 blocks, E8M0 (power-of-two) scale       | E4M3 / E4M3 |

"Recipe" in bench/precision always means a *scaling recipe* (this module's `ScalingRecipe`), not
an entry point under recipes/. The registry is open: a new recipe is one
`register_recipe(name, scaling, formats, ...)` call plus its quantizer, registered by the module
that defines it (`bench.precision.formats.base.register_format` does both for a whole format); the
planner, the engines, the linears and the generator take it from there with no other change.

Finer granularity isolates outliers: one large value only coarsens its own row/tile instead of
the whole tensor, which is why the fine-grained recipes can afford E4M3 (more precision, less
range) for gradients too. The price is more scales to compute and carry through the GEMM.
Why 1x128 for activations but 128x128 for weights (DeepSeek-V3): activation outliers live in
individual tokens (rows), so a tile must not span rows; weights are smoother, and a square block
is the same block in W and Wᵀ, so the weight is quantized once and serves forward and dgrad.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

SCALINGS = ["delayed", "tensorwise", "rowwise", "blockwise", "mx"]  # grows with register_recipe
FORMAT_NAMES = ["e4m3", "e5m2"]                                      # grows with register_recipe
ROLES = ("input", "weight", "grad_output")
# The element formats each scaling's quantizer handles (a scaling override must not cross from FP8
# to FP4 or back: an FP8 name with scaling=nvfp4 would cast E4M3 through the E2M1 quantizer).
SCALING_FORMATS: dict[str, set[str]] = {s: {"e4m3", "e5m2"} for s in SCALINGS}
_CHOICES = {"scaling": SCALINGS, "fwd_format": FORMAT_NAMES, "grad_format": FORMAT_NAMES,
            "amax_compute_algo": ("max", "most_recent"), "mx_scale_rounding": ("floor", "rceil")}
_POSITIVE = ("amax_history_len", "act_block", "weight_block", "mx_block")


@dataclass(frozen=True)  # frozen: the named defaults in RECIPES can never be mutated by a caller
class ScalingRecipe:
    name: str
    scaling: str                      # delayed | tensorwise | rowwise | blockwise | mx
    fwd_format: str = "e4m3"          # input and weight casts
    grad_format: str = "e4m3"         # grad_output casts
    amax_history_len: int = 16        # delayed: window of past amaxes
    amax_compute_algo: str = "max"    # delayed: max over the window | most_recent entry
    margin: int = 0                   # delayed: scale divided by 2^margin (headroom for growth)
    pow2_scales: bool = False         # round scales down to 2^k (rowwise always does)
    act_block: int = 128              # blockwise: 1 x act_block tiles for inputs and grads
    weight_block: int = 128           # blockwise: weight_block x weight_block weight blocks
    mx_block: int = 32                # mx: 1 x mx_block blocks along the reduction dim
    mx_scale_rounding: str = "rceil"  # mx: rceil (TE, hardware cast; never saturates) | floor (OCP MX v1.0)
    fast_accum: bool = True           # CUDA forward GEMM only: fp8 tensor-core fast accumulation
    # FP4 training switches (nvfp4, mxfp4: bench/precision/formats/e2m1.py; no effect on the FP8 scalings)
    weight_2d: bool = False           # nvfp4: weights in 16x16 tiles (else 1x16 along K)
    rht: bool = False                 # 16-point random Hadamard transform on the wgrad operands
    stochastic_rounding: bool = False # gradients (grad_output) rounded stochastically
    eps: float = 1e-12                # amax floor in s = max / max(amax, eps): s stays finite

    def __post_init__(self):
        for k, valid in _CHOICES.items():
            if getattr(self, k) not in valid:
                raise ValueError(f"precision.{k}={getattr(self, k)!r} for {self.name}; valid: {', '.join(valid)}")
        fmts = SCALING_FORMATS[self.scaling]
        if not {self.fwd_format, self.grad_format} <= fmts:
            valid = [s for s, f in SCALING_FORMATS.items() if {self.fwd_format, self.grad_format} <= f]
            raise ValueError(f"precision.scaling={self.scaling!r} for {self.name} casts {'/'.join(sorted(fmts))}, not "
                             f"{self.fwd_format}/{self.grad_format}; valid: {', '.join(valid) or '-'}")
        for k in _POSITIVE:
            if int(getattr(self, k)) <= 0:
                raise ValueError(f"precision.{k}={getattr(self, k)} for {self.name} must be a positive integer")
        if not self.eps > 0:
            raise ValueError(f"precision.eps={self.eps} for {self.name} must be > 0")

    def format_for(self, role: str) -> str:
        """grad_output casts use grad_format; input and weight casts use fwd_format."""
        return self.grad_format if role == "grad_output" else self.fwd_format

    @property
    def per_tensor(self) -> bool:
        return self.scaling in ("delayed", "tensorwise")


# mxfp8 defaults to rceil (DESIGN.md §5): with floor, Gaussian data saturates ~0.9 % of the
# elements by design, and Transformer Engine and the hardware cast both compute rceil.
RECIPES: dict[str, ScalingRecipe] = {r.name: r for r in (
    ScalingRecipe("fp8_delayed", "delayed", "e4m3", "e5m2", amax_history_len=16, amax_compute_algo="max", margin=0),
    ScalingRecipe("fp8_tensorwise", "tensorwise", "e4m3", "e5m2"),
    ScalingRecipe("fp8_rowwise", "rowwise", "e4m3", "e4m3", pow2_scales=True),
    ScalingRecipe("fp8_blockwise", "blockwise", "e4m3", "e4m3", act_block=128, weight_block=128, pow2_scales=False),
    ScalingRecipe("mxfp8", "mx", "e4m3", "e4m3", mx_block=32, mx_scale_rounding="rceil"),
)}


def register_recipe(name: str, scaling: str, fwd_format: str, grad_format: str, **fields) -> ScalingRecipe:
    """Add a named recipe to the registry, admitting its scaling and element formats as valid
    choices first (a recipe is validated when it is built). The quantizer for a new scaling is
    registered separately, next to its code (bench.precision.formats.base.register_format)."""
    for f in (fwd_format, grad_format):
        if f not in FORMAT_NAMES:
            FORMAT_NAMES.append(f)
    if scaling not in SCALINGS:
        SCALINGS.append(scaling)
    SCALING_FORMATS.setdefault(scaling, set()).update((fwd_format, grad_format))
    RECIPES[name] = ScalingRecipe(name, scaling, fwd_format, grad_format, **fields)
    return RECIPES[name]


_TYPES = {f.name: f.type for f in dataclasses.fields(ScalingRecipe)}


def _coerce(name: str, key: str, value):
    """Config values arrive from YAML/CLI overrides; accept ints for floats and vice versa where
    lossless, reject anything else with the recipe's error format."""
    t = _TYPES[key]
    try:
        if t == "bool":
            if isinstance(value, bool):
                return value
            raise TypeError
        if t == "int":
            if isinstance(value, bool) or int(value) != value:
                raise TypeError
            return int(value)
        if t == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"precision.{key}={value!r} for {name} is not a valid {t}") from None


def get_recipe(spec) -> ScalingRecipe:
    """A ScalingRecipe from a name, a ScalingRecipe, or a mapping (a Hydra precision config, dict or DictConfig).

    A mapping's `name` picks the named default and its other recipe fields override it; keys that
    are not recipe fields (engine, keep_high_precision, ...) are ignored. Unknown names and bad
    values raise ValueError naming the value and the valid choices."""
    if isinstance(spec, ScalingRecipe):
        return spec
    fields = {}
    if isinstance(spec, str):
        name = spec
    elif isinstance(spec, Mapping):
        name = spec.get("name")
        if name is None:
            raise ValueError(f"precision config has no name; valid: {', '.join(RECIPES)}")
        fields = {k: _coerce(name, k, spec[k]) for k in spec if k in _TYPES and k != "name"}
    else:
        raise ValueError(f"FP8 recipe must be a name, a ScalingRecipe or a mapping, got {type(spec).__name__}; "
                         f"valid names: {', '.join(RECIPES)}")
    if name not in RECIPES:
        raise ValueError(f"unknown FP8 recipe {name!r}; valid: {', '.join(RECIPES)}")
    return dataclasses.replace(RECIPES[name], **fields)
