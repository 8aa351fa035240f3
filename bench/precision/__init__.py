"""Precision: FP8 formats and recipes, quantizers, numerics stats, the reference FP8 linear,
engines and autocast. The stable API (DESIGN.md §10) is `fake_quantize`."""
from bench.precision.formats import FORMATS, Float8Format
from bench.precision.linear import ReferenceFP8Linear
from bench.precision.quantize import AmaxHistory, Quantized, fake_quantize, quantize
from bench.precision.recipes import RECIPES, Recipe, get_recipe, validate_shape
from bench.precision.stats import quant_stats

__all__ = ["fake_quantize", "quantize", "Quantized", "AmaxHistory", "Recipe", "RECIPES", "get_recipe",
           "validate_shape", "quant_stats", "ReferenceFP8Linear", "FORMATS", "Float8Format"]
