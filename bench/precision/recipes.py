"""FP8 recipe definitions (DESIGN.md §5): the knobs, and the named defaults.

| name           | scaling    | granularity                                  | fwd / grad  |
| fp8_delayed    | delayed    | per tensor, scale from an amax history       | E4M3 / E5M2 |
| fp8_tensorwise | tensorwise | per tensor, this tensor's amax               | E4M3 / E5M2 |
| fp8_rowwise    | rowwise    | per row along the GEMM's reduction dim, 2^k  | E4M3 / E4M3 |
| fp8_blockwise  | blockwise  | 1x128 activation/grad tiles, 128x128 weights | E4M3 / E4M3 |
| mxfp8          | mx         | 1x32 blocks, E8M0 (power-of-two) scale       | E4M3 / E4M3 |
Finer granularity isolates outliers (one large value only coarsens its own row/tile), which is
why the fine-grained recipes can afford E4M3 for gradients too.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    name: str
    scaling: str                    # delayed | tensorwise | rowwise | blockwise | mx
    fwd_format: str = "e4m3"        # input and weight casts
    grad_format: str = "e4m3"       # grad_output casts
    amax_history_len: int = 16      # delayed
    amax_compute_algo: str = "max"  # delayed: max | most_recent
    margin: int = 0                 # delayed: scale divided by 2^margin (headroom)
    pow2_scales: bool = False       # round scales down to a power of two (exact rescaling)
    act_block: int = 128            # blockwise: 1 x act_block tiles for inputs and grads
    weight_block: int = 128         # blockwise: weight_block x weight_block weight blocks
    mx_block: int = 32              # mx: 1 x mx_block blocks
    mx_scale_rounding: str = "floor"  # mx: floor (OCP MX v1.0) | rceil
    fast_accum: bool = True         # GPU forward GEMM only
    eps: float = 1e-12              # amax floor in s = max / max(amax, eps)

    def format_for(self, role: str) -> str:
        return self.grad_format if role == "grad_output" else self.fwd_format

    @property
    def per_tensor(self) -> bool:
        return self.scaling in ("delayed", "tensorwise")


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("fp8_delayed", "delayed", "e4m3", "e5m2"),
    Recipe("fp8_tensorwise", "tensorwise", "e4m3", "e5m2"),
    Recipe("fp8_rowwise", "rowwise", "e4m3", "e4m3", pow2_scales=True),
    Recipe("fp8_blockwise", "blockwise", "e4m3", "e4m3"),
    Recipe("mxfp8", "mx", "e4m3", "e4m3"),
)}
_CHOICES = {"scaling": ("delayed", "tensorwise", "rowwise", "blockwise", "mx"), "fwd_format": ("e4m3", "e5m2"),
            "grad_format": ("e4m3", "e5m2"), "amax_compute_algo": ("max", "most_recent"),
            "mx_scale_rounding": ("floor", "rceil")}


def get_recipe(spec) -> Recipe:
    """A Recipe from a name, a Recipe, or a mapping (a Hydra precision config): the mapping's
    fields override the named default; keys that are not recipe fields (engine, ...) are ignored."""
    if isinstance(spec, Recipe):
        return spec
    fields = {}
    if isinstance(spec, str):
        name = spec
    else:
        spec = dict(spec)
        name = spec.get("name")
        fields = {k: v for k, v in spec.items() if k in Recipe.__dataclass_fields__ and k != "name"}
    if name not in RECIPES:
        raise ValueError(f"unknown FP8 recipe {name!r}; valid: {', '.join(RECIPES)}")
    for k, valid in _CHOICES.items():
        if k in fields and fields[k] not in valid:
            raise ValueError(f"precision.{k}={fields[k]!r} for {name}; valid: {', '.join(valid)}")
    for k in ("amax_history_len", "act_block", "weight_block", "mx_block"):
        if k in fields and int(fields[k]) <= 0:
            raise ValueError(f"precision.{k}={fields[k]} must be positive")
    return dataclasses.replace(RECIPES[name], **fields)


def validate_shape(recipe: Recipe, out_features: int, in_features: int) -> str | None:
    """Why a Linear [out, in] cannot run this recipe, or None. FP8 GEMMs need both dims to be
    multiples of 16; MX blocks must tile both dims (each is a reduction dim in some GEMM)."""
    if in_features % 16 or out_features % 16:
        return "FP8 GEMMs need in_features and out_features divisible by 16"
    if recipe.scaling == "mx" and (in_features % recipe.mx_block or out_features % recipe.mx_block):
        return f"MX needs in_features and out_features divisible by mx_block={recipe.mx_block}"
    return None
