"""Quantized formats: the interface every format implements and its registry (base.py), and the
formats, one file each: FP8 (fp8.py, its scale formulas and element formats in fp8_scales.py: the
five scalings delayed, tensorwise, rowwise, blockwise, mx), and FP4 on E2M1 elements (e2m1.py:
rounding, the quantized tensor, the shared frame) as nvfp4.py and mxfp4.py. hadamard.py is the
random Hadamard transform of the FP4 wgrad operands. Importing this package registers them all;
a new format is one file here plus its import below (docs/architecture.md, "Adding a block format").
"""
from bench.precision.formats import fp8, nvfp4, mxfp4  # noqa: F401  (register in this order: RECIPES' order)
from bench.precision.formats.fp8_scales import FORMATS, Float8Format  # noqa: F401  (the FP8 element formats)
