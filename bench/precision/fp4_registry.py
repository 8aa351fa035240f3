"""nvfp4 and mxfp4 in the one precision registry (DESIGN.md §5): two `register_recipe` entries, one
quantizer, and the linears the engines swap in. Nothing else in the planner, the engines or the
generator knows about FP4; this module is imported by bench/precision/__init__.py, so the entries
exist wherever a recipe can be named.

  recipe   ScalingRecipe(name, scaling=name, e2m1/e2m1) with the FP4 switches of fp4.FP4_DEFAULTS:
           nvfp4 as Transformer Engine's NVFP4BlockScaling (16x16 weight tiles, RHT on the wgrad
           operands, stochastic rounding of gradients); mxfp4 plain OCP MX (1x32, floor, no RHT/SR)
  quantize fp4.quantize_fp4 with round-to-nearest-even: what `quantize` and `fake_quantize` return
           for these recipes (an FP4Quantized: .dequantize() gives x̂). Stochastic rounding and the
           Hadamard transform belong to the training linear's backward, not to a plain cast
  shapes   fp4.validate_fp4_linear: both Linear dims multiples of the block (16 / 32)
  trainer  the reference engine swaps in fp4_linear.ReferenceFP4Linear (fake-quant forward and
           backward); each module's SR stream is seeded from its position in the plan
  generator the inference engine swaps in fp4_inference.FP4InferenceLinear: W4A4, or W4A16 with
           `weights_only` (weights quantized once per refit, in the weight tiling of the recipe)
  GPU      Transformer Engine's NVFP4 and torchao's MX-FP4 GEMMs need Blackwell (sm100) and are not
           wired in: asking te/torchao for an FP4 recipe is refused with one line on every device,
           and `engine=auto` picks the reference (trainer) / inference (generator) engine
"""
from __future__ import annotations

import dataclasses

from bench.precision.engines import register_converters
from bench.precision.fp4 import FP4_DEFAULTS, MXFP4_BLOCK, FP4Recipe, quantize_fp4, validate_fp4_linear
from bench.precision.quantize import register_quantizer
from bench.precision.recipes import RECIPES, SHAPE_CHECKS, ScalingRecipe, register_recipe

FP4_SCALINGS = tuple(FP4_DEFAULTS)  # nvfp4, mxfp4: the scaling of each is its own name
GPU_REASON = ("FP4 GEMMs (Transformer Engine NVFP4, torchao MX-FP4) need a Blackwell GPU (compute capability "
              "10.0) and are not wired into this harness; the reference engine emulates them")


def is_fp4(recipe) -> bool:
    """Whether a ScalingRecipe (or a recipe name) is one of the FP4 recipes."""
    scaling = recipe.scaling if isinstance(recipe, ScalingRecipe) else RECIPES[recipe].scaling if recipe in RECIPES else None
    return scaling in FP4_SCALINGS


def fp4_recipe(r: ScalingRecipe) -> FP4Recipe:
    """The FP4 knobs of a registered FP4 ScalingRecipe (its scaling names the FP4 format)."""
    return FP4Recipe(r.scaling, weight_2d=r.weight_2d, rht=r.rht, stochastic_rounding=r.stochastic_rounding,
                     mx_scale_rounding=r.mx_scale_rounding)


def _quantize(x, recipe: ScalingRecipe, role: str, history=None):
    """The registry's quantizer: round to nearest even with the tensor's own global scale (no
    history: FP4 recipes have no delayed scaling)."""
    return quantize_fp4(x, fp4_recipe(recipe), role)


def _shape_check(recipe: ScalingRecipe, out_features: int, in_features: int) -> str | None:
    return validate_fp4_linear(fp4_recipe(recipe), out_features, in_features)


def _convert_trainer(model, plan) -> None:
    from bench.precision.fp4_linear import convert_to_fp4

    convert_to_fp4(model, fp4_recipe(plan.recipe), plan.fp8_modules)


def _convert_generator(model, plan) -> None:
    from bench.precision.fp4_inference import FP4InferenceLinear

    r = fp4_recipe(plan.recipe)
    for n in plan.fp8_modules:
        model.set_submodule(n, FP4InferenceLinear.from_linear(model.get_submodule(n), r, n, plan.weights_only))


def register() -> None:
    for name, knobs in FP4_DEFAULTS.items():
        fields = {k: v for k, v in knobs.items() if k in {f.name for f in dataclasses.fields(ScalingRecipe)}}
        if name == "mxfp4":
            fields["mx_block"] = MXFP4_BLOCK  # the block of the format, recorded like mxfp8's
        register_recipe(name, name, "e2m1", "e2m1", **fields)
        register_quantizer(name, _quantize)
        SHAPE_CHECKS[name] = _shape_check
        register_converters(name, _convert_trainer, _convert_generator, GPU_REASON)


register()
