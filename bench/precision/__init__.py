"""Precision: the quantized formats behind one interface (formats/: FP8 with its five scaling
recipes, nvfp4 and mxfp4 on E2M1 elements; formats/base.py the interface and registry), the one
recipe registry (recipes.py), the stats of one cast (stats.py), the linears that run any format
(linears/: the reference fake-quant training linear, the generator's inference linear, the GEMM
dispatcher), the engines (engines.py, te.py) and the planner both sides go through (plan.py).
May import bench.core only. The stable API (DESIGN.md §10) is `fake_quantize`; entry points use
`plan_precision` and `apply_precision`."""
from bench.precision.formats import FORMATS, Float8Format  # registers every format
from bench.precision.formats.base import (QuantFormat, fake_quantize, format_of, quantize, register_format,
                                          register_quantizer, validate_shape)
from bench.precision.formats.fp8 import Quantized
from bench.precision.formats.fp8_scales import AmaxHistory
from bench.precision.linears.inference import InferenceLinear
from bench.precision.linears.reference import ReferenceLinear
from bench.precision.plan import PrecisionPlan, apply_precision, plan_precision, print_precision_state
from bench.precision.recipes import RECIPES, ScalingRecipe, get_recipe, register_recipe
from bench.precision.stats import quant_stats

__all__ = ["fake_quantize", "quantize", "Quantized", "AmaxHistory", "ScalingRecipe", "RECIPES", "get_recipe",
           "register_recipe", "register_quantizer", "register_format", "format_of", "QuantFormat", "validate_shape",
           "quant_stats", "ReferenceLinear", "InferenceLinear", "FORMATS", "Float8Format", "PrecisionPlan",
           "plan_precision", "apply_precision", "print_precision_state"]
