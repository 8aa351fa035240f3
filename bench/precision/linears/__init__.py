"""The linears every format runs through: reference.py, the fake-quant training linear (all three
GEMMs, the numerics ground truth of the trainer); inference.py, the generator's linear (weights
quantized once per refit, W8A8/W4A4 or weights-only); gemm.py, the one scaled-GEMM dispatcher both
use. Each asks the recipe's format (bench.precision.formats.base.format_of) for its casts."""
