"""Precision: FP8 formats and recipes, quantizers, the reference FP8 linear, engines, autocast."""
from bench.precision.linear import ReferenceFP8Linear
from bench.precision.quantize import AmaxHistory, Quantized, fake_quantize, quantize
from bench.precision.recipes import RECIPES, Recipe, get_recipe, validate_shape
from bench.precision.stats import quant_stats

__all__ = ["fake_quantize", "quantize", "Quantized", "AmaxHistory", "Recipe", "RECIPES", "get_recipe",
           "validate_shape", "quant_stats", "ReferenceFP8Linear"]
