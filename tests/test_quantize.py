"""Every recipe's quantization against an independent float64 reimplementation of DESIGN.md §5."""
import math

import numpy as np
import pytest
import torch

from bench.precision import RECIPES, fake_quantize, get_recipe, quant_stats, quantize
from bench.precision.formats import FORMATS
from bench.precision.quantize import AmaxHistory

FMT_MAX = {"e4m3": 448.0, "e5m2": 57344.0}
EMAX = {"e4m3": 8, "e5m2": 15}


def fp8_grid(fmt: str) -> np.ndarray:
    """All finite values of the format, from its 256 bit patterns, sorted (float64)."""
    dtype = FORMATS[fmt].dtype
    vals = torch.arange(256, dtype=torch.uint8).view(dtype).double().numpy()
    return np.unique(vals[np.isfinite(vals)])


def round_to_grid(x: np.ndarray, fmt: str) -> np.ndarray:
    """Round-to-nearest-even onto the FP8 grid (x already clamped to ±max)."""
    grid = fp8_grid(fmt)
    idx = np.clip(np.searchsorted(grid, x), 1, len(grid) - 1)
    lo, hi = grid[idx - 1], grid[idx]
    out = np.where(np.abs(x - lo) < np.abs(hi - x), lo, hi)
    tie = np.abs(x - lo) == np.abs(hi - x)
    if tie.any():  # the even neighbour has an even mantissa: its bit pattern ends in 0
        bits = {v: i for i, v in enumerate(torch.arange(256, dtype=torch.uint8).view(FORMATS[fmt].dtype).double().tolist())}
        lo_even = np.array([bits.get(v, 0) % 2 == 0 for v in lo[tie]])
        out[tie] = np.where(lo_even, lo[tie], hi[tie])
    return out


def ref_tiles(shape, recipe, role):
    rows, k = shape
    r = get_recipe(recipe)
    if r.scaling in ("delayed", "tensorwise"):
        return rows, k
    if r.scaling == "rowwise":
        return 1, k
    if r.scaling == "blockwise":
        return (r.weight_block, r.weight_block) if role == "weight" else (1, r.act_block)
    return 1, r.mx_block


def ref_scale(amax: float, recipe, role) -> float:
    """The recipe's scale for one tile, in float64, from the formula."""
    r = get_recipe(recipe)
    fmt = r.grad_format if role == "grad_output" else r.fwd_format
    mx = FMT_MAX[fmt]
    if r.scaling == "mx":
        if amax == 0:
            return 1.0
        if r.mx_scale_rounding == "floor":
            e = math.floor(math.log2(amax)) - EMAX[fmt]
        else:
            e = math.ceil(math.log2(amax / mx))
        return 2.0 ** -max(-127, min(127, e))
    s = mx / max(amax, r.eps) / (2.0 ** r.margin if r.scaling == "delayed" else 1.0)
    s = float(np.float32(s))  # scales are fp32 tensors
    if r.scaling == "rowwise" or r.pow2_scales:
        s = 2.0 ** math.floor(math.log2(s))
    return s


def ref_fake_quantize(x: torch.Tensor, recipe, role) -> np.ndarray:
    r = get_recipe(recipe)
    fmt = r.grad_format if role == "grad_output" else r.fwd_format
    xn = x.double().numpy()
    out = np.empty_like(xn)
    tr, tc = ref_tiles(xn.shape, recipe, role)
    for i in range(0, xn.shape[0], tr):
        for j in range(0, xn.shape[1], tc):
            t = xn[i:i + tr, j:j + tc]
            s = ref_scale(float(np.abs(t).max()), recipe, role)
            xs = np.float32(t * np.float32(s)).astype(np.float64)  # x·s is an fp32 product
            q = round_to_grid(np.clip(xs, -FMT_MAX[fmt], FMT_MAX[fmt]), fmt)
            out[i:i + tr, j:j + tc] = np.float32(q / s)  # x̂ = q / s is an fp32 division
    return out


def sample(shape, seed=0, outliers=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.logspace(-3, 2, shape[1])[None, :]  # wide per-channel range
    if outliers:
        x[3, 5] = 3e3
    return x


CASES = [(name, role) for name in RECIPES for role in ("input", "weight", "grad_output")]


@pytest.mark.parametrize("recipe,role", CASES, ids=[f"{n}-{r}" for n, r in CASES])
def test_fake_quantize_matches_float64_reference(recipe, role):
    x = sample((160, 200))  # partial tiles along both dims for 1x128 and 128x128
    got = fake_quantize(x, recipe, role).double().numpy()
    np.testing.assert_array_equal(got, ref_fake_quantize(x, recipe, role))


@pytest.mark.parametrize("rounding,amax,expected", [("floor", 1.0, 256.0), ("floor", 500.0, 1.0),
                                                     ("rceil", 500.0, 0.5), ("rceil", 448.0, 1.0),
                                                     ("floor", 0.0, 1.0), ("floor", 2.0 ** -140, 2.0 ** 127)])
def test_mx_e8m0_scale_rounding(rounding, amax, expected):
    r = get_recipe({"name": "mxfp8", "mx_scale_rounding": rounding})
    x = torch.zeros(1, 32)
    x[0, 0] = amax
    assert float(quantize(x, r).scale.reshape(-1)[0]) == expected


def test_mx_floor_saturates_block_max_above_448():
    x = torch.zeros(1, 32)
    x[0, 0] = 500.0  # floor(log2 500) = 8 -> X = 1: 500 > 448 saturates
    q = quantize(x, "mxfp8")
    assert float(q.dequantize()[0, 0]) == 448.0
    assert quant_stats(x, q)["overflow_frac"] == 1 / 32


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_scales_are_powers_of_two_where_the_recipe_says(recipe):
    s = quantize(sample((64, 256)), recipe, "input").scale
    pow2 = torch.equal(torch.frexp(s)[0].abs(), torch.full_like(s, 0.5))
    assert pow2 == (recipe in ("fp8_rowwise", "mxfp8"))


def test_blockwise_weight_blocks_are_128x128_and_activation_tiles_1x128():
    x = torch.ones(256, 256)
    x[0, 0] = 100.0
    w = quantize(x, "fp8_blockwise", "weight")
    a = quantize(x, "fp8_blockwise", "input")
    assert w.scale.shape == (2, 2) and a.scale.shape == (256, 2)
    assert (w.scale[0, 0], w.scale[1, 1]) == (torch.tensor(4.48), torch.tensor(448.0))  # outlier coarsens its block
    assert a.scale[1, 0] == 448.0 and a.scale[0, 0] == torch.tensor(4.48)  # ... but only its own row tile


def test_amax_history_rolls_newest_first_and_scales_after_use():
    h = AmaxHistory(3, "max", margin=1)
    e4m3 = FORMATS["e4m3"]
    for a in (1.0, 4.0, 2.0):
        h.update(torch.tensor(a))
    assert h.history.tolist() == [2.0, 4.0, 1.0]
    assert float(h.scale(e4m3)) == 448.0 / 4.0 / 2.0
    h.update(torch.tensor(0.5))  # 1.0 rolls out
    assert h.history.tolist() == [0.5, 2.0, 4.0]
    mr = AmaxHistory(3, "most_recent")
    mr.update(torch.tensor(8.0))
    mr.update(torch.tensor(2.0))
    assert float(mr.scale(e4m3)) == 224.0


def test_amax_history_keeps_previous_scale_when_amax_is_zero():
    h = AmaxHistory(2)
    h.update(torch.tensor(0.0), used_scale=torch.tensor(7.0))
    assert float(h.scale(FORMATS["e4m3"])) == 7.0


def test_delayed_scaling_uses_the_stale_history_and_overflows_on_a_new_outlier():
    r = get_recipe("fp8_delayed")
    h = AmaxHistory(r.amax_history_len)
    h.update(torch.tensor(1.0))
    x = torch.full((4, 32), 0.5)
    x[0, :4] = 10.0  # 10 · (448 / 1) > 448: saturates
    q = quantize(x, r, "input", history=h)
    assert float(q.scale) == 448.0
    st = quant_stats(x, q)
    assert st["overflow_frac"] == 4 / 128
    assert float(q.dequantize()[0, 0]) == 1.0  # clamped to 448 / 448
    cur = quantize(x, "fp8_tensorwise", "input")
    assert quant_stats(x, cur)["overflow_frac"] == 0.0


def test_underflow_counts_nonzeros_flushed_to_zero():
    x = torch.full((1, 64), 1.0)
    x[0, :16] = 1e-6  # with amax 1 and s = 448: 4.5e-4 < half the smallest subnormal 2^-10
    q = quantize(x, "fp8_tensorwise")
    assert quant_stats(x, q)["underflow_frac"] == 16 / 64


def test_sqnr_of_exactly_representable_values_is_the_cap_and_finite_otherwise():
    x = torch.tensor([[448.0, -224.0, 1.75, 0.0] * 4])
    st = quant_stats(x, quantize(x, "fp8_tensorwise"))
    assert st["sqnr_db"] == 200.0 and st["overflow_frac"] == 0.0
    y = sample((32, 128), outliers=False)
    assert 20 < quant_stats(y, quantize(y, "fp8_tensorwise"))["sqnr_db"] < 40


def test_e5m2_grads_have_more_range_and_less_precision_than_e4m3():
    x = sample((64, 128), outliers=False)
    hybrid = fake_quantize(x, "fp8_tensorwise", "grad_output")  # E5M2
    e4m3 = fake_quantize(x, "fp8_tensorwise", "input")
    assert (x - hybrid).norm() > (x - e4m3).norm()


def test_unknown_recipe_names_valid_choices():
    with pytest.raises(ValueError, match="valid: fp8_delayed, fp8_tensorwise"):
        get_recipe("fp4")
