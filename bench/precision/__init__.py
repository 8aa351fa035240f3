"""Precision: FP8 and FP4 (nvfp4, mxfp4: fp4_registry.py) formats and scaling recipes, quantizers, numerics stats, the reference FP8
linear, the inference linear, the engines, and the planner both sides go through. The stable API
(DESIGN.md §10) is `fake_quantize`; entry points use `plan_precision` and `apply_precision`."""
from bench.precision.formats import FORMATS, Float8Format
from bench.precision.linear import ReferenceFP8Linear
from bench.precision.plan import PrecisionPlan, apply_precision, plan_precision, print_precision_state
from bench.precision.quantize import AmaxHistory, Quantized, fake_quantize, quantize, register_quantizer
from bench.precision.recipes import RECIPES, ScalingRecipe, get_recipe, register_recipe, validate_shape
from bench.precision.stats import quant_stats
from bench.precision import fp4_registry  # noqa: F401,E402  (registers nvfp4 and mxfp4)

__all__ = ["fake_quantize", "quantize", "Quantized", "AmaxHistory", "ScalingRecipe", "RECIPES", "get_recipe",
           "register_recipe", "register_quantizer", "validate_shape", "quant_stats", "ReferenceFP8Linear",
           "FORMATS", "Float8Format", "PrecisionPlan", "plan_precision", "apply_precision", "print_precision_state"]
