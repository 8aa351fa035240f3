"""Every recipe's quantization against an independent float64 reimplementation of DESIGN.md §5.

The reference below shares no code with bench.precision.quantize: it rounds onto the FP8 grid
by enumerating the format's 256 bit patterns (round to nearest, ties to the even bit pattern),
computes every scale from the formula with exact comparisons in float64, and forms the two fp32
roundings the implementation performs (x·s and q/s) as correctly rounded fp32 results.
"""
import math

import numpy as np
import pytest
import torch

from bench.precision import RECIPES, AmaxHistory, fake_quantize, get_recipe, quant_stats, quantize, validate_shape
from bench.precision.formats import FORMATS

FMT_MAX = {"e4m3": 448.0, "e5m2": 57344.0}
EMAX = {"e4m3": 8, "e5m2": 15}
ROLES = ("input", "weight", "grad_output")


# --- the float64 reference ------------------------------------------------------------------
def fp8_grid(fmt: str):
    """All finite values of the format (sorted, float64) and whether each bit pattern is even."""
    vals = torch.arange(256, dtype=torch.uint8).view(FORMATS[fmt].dtype).double().numpy()
    bits = np.arange(256)
    keep = np.isfinite(vals) & ~((vals == 0) & (bits >= 128))  # one zero
    order = np.argsort(vals[keep])
    return vals[keep][order], (bits[keep][order] % 2 == 0)


def round_to_fp8(x: np.ndarray, fmt: str) -> np.ndarray:
    """Round-to-nearest-even onto the FP8 grid; x must already be clamped to ±max."""
    grid, even = fp8_grid(fmt)
    i = np.clip(np.searchsorted(grid, x), 1, len(grid) - 1)
    lo, hi = grid[i - 1], grid[i]
    dlo, dhi = x - lo, hi - x
    return np.where(dlo < dhi, lo, np.where(dhi < dlo, hi, np.where(even[i - 1], lo, hi)))


def f32_div(a: np.ndarray, b: np.ndarray, down: bool = False) -> np.ndarray:
    """a / b as an fp32 value (a, b fp32 values, b > 0): correctly rounded (ties to even), or
    rounded toward zero. Candidates are checked exactly in float64: a midpoint of two fp32
    numbers has 25 bits, times b's 24 bits fits in 53."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sign, a = np.sign(a), np.abs(a)
    c = (a / b).astype(np.float32)
    up = np.nextafter(c, np.float32(np.inf))
    dn = np.nextafter(c, np.float32(0))
    c64, up64, dn64 = c.astype(np.float64), up.astype(np.float64), dn.astype(np.float64)
    if down:  # largest fp32 with c·b <= a
        c = np.where(c64 * b > a, dn, np.where(up64 * b <= a, up, c))
    else:
        mid_hi, mid_lo = (c64 + up64) / 2 * b, (c64 + dn64) / 2 * b
        even = lambda v: (v.view(np.uint32) & 1) == 0
        c = np.where((a > mid_hi) | ((a == mid_hi) & even(up)), up,
                     np.where((a < mid_lo) | ((a == mid_lo) & even(dn) & (c64 > 0)), dn, c))
    return sign * c.astype(np.float64)


def pow2_floor_of_ratio(num: float, den: float) -> float:
    """2^floor(log2(num/den)), decided by exact power-of-two comparisons."""
    k = math.floor(math.log2(num) - math.log2(den))
    while den * 2.0 ** k > num:
        k -= 1
    while den * 2.0 ** (k + 1) <= num:
        k += 1
    return 2.0 ** k


def ref_scale(amax: float, r, role: str, hist_amax: float | None = None) -> float:
    """The scale of one tile from DESIGN §5. Delayed uses hist_amax (None: first step, the
    current amax); a zero amax there keeps the previous (initial) scale 1."""
    fmt = r.format_for(role)
    mx = FMT_MAX[fmt]
    if r.scaling == "mx":
        if amax == 0:
            return 1.0
        if r.mx_scale_rounding == "floor":
            e = math.frexp(amax)[1] - 1 - EMAX[fmt]        # floor(log2 amax) − emax_elem
        else:
            e = 0
            while amax > mx * 2.0 ** e:
                e += 1
            while amax <= mx * 2.0 ** (e - 1):
                e -= 1                                      # smallest e with amax <= max·2^e
        return 2.0 ** -max(-127, min(127, e))
    margin = r.margin if r.scaling == "delayed" else 0
    if r.scaling == "delayed":
        amax = amax if hist_amax is None else hist_amax
        if amax == 0:
            return 1.0
    a = max(amax, float(np.float32(r.eps)))
    if r.pow2_scales:
        return pow2_floor_of_ratio(mx, a) / 2.0 ** margin
    return float(f32_div(mx, a, down=True)) / 2.0 ** margin


def ref_tile(shape, r, role):
    return {"delayed": shape, "tensorwise": shape, "rowwise": (1, shape[1]), "mx": (1, r.mx_block),
            "blockwise": (r.weight_block, r.weight_block) if role == "weight" else (1, r.act_block)}[r.scaling]


def ref_quantize(x: torch.Tensor, recipe, role: str, hist_amax: float | None = None) -> dict:
    """x̂, the per-tile scales and the stats, all in float64 (values of fp32 / fp8 numbers)."""
    r = get_recipe(recipe)
    fmt = r.format_for(role)
    mx = FMT_MAX[fmt]
    xn = x.float().double().numpy()
    tr, tc = ref_tile(xn.shape, r, role)
    nr, nc = -(-xn.shape[0] // tr), -(-xn.shape[1] // tc)
    scales = np.empty((nr, nc))
    S = np.empty_like(xn)
    for i in range(nr):
        for j in range(nc):
            blk = np.abs(xn[i * tr:(i + 1) * tr, j * tc:(j + 1) * tc])
            scales[i, j] = ref_scale(float(blk.max()), r, role, hist_amax)
            S[i * tr:(i + 1) * tr, j * tc:(j + 1) * tc] = scales[i, j]
    xs = (xn * S).astype(np.float32).astype(np.float64)  # the fp32 product (exact in float64 first)
    q = round_to_fp8(np.clip(xs, -mx, mx), fmt)
    xhat = f32_div(q, S)
    nz = xn != 0
    err = np.linalg.norm(xn - xhat)
    return {"xhat": xhat, "scales": scales, "q": q,
            "amax": np.abs(xn).max(), "scale": scales.min(),
            "overflow_frac": (np.abs(xs) > mx).sum() / xn.size,
            "underflow_frac": (nz & (q == 0)).sum() / max(nz.sum(), 1),
            "sqnr_db": 200.0 if err == 0 else min(200.0, 20 * math.log10(np.linalg.norm(xn) / err))}


def sample(shape, seed=0, outliers=True):
    """Per-column magnitudes over five decades (so tiles differ), plus an outlier."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.logspace(-3, 2, shape[1])[None, :]
    if outliers:
        x[3, 5] = 3e3
        x[-1, -1] = -7e3
    return x


# Named recipes plus variants that exercise the other knobs of the same formulas.
VARIANTS = {
    "fp8_tensorwise_pow2": {"name": "fp8_tensorwise", "pow2_scales": True},
    "fp8_tensorwise_e5m2_fwd": {"name": "fp8_tensorwise", "fwd_format": "e5m2"},
    "fp8_rowwise_fp32_scales": {"name": "fp8_rowwise", "pow2_scales": False},
    "fp8_blockwise_48x64": {"name": "fp8_blockwise", "act_block": 48, "weight_block": 64},
    "fp8_blockwise_pow2": {"name": "fp8_blockwise", "pow2_scales": True},
    "fp8_delayed_margin2": {"name": "fp8_delayed", "margin": 2, "amax_compute_algo": "most_recent"},
    "mxfp8_floor": {"name": "mxfp8", "mx_scale_rounding": "floor"},
    "mxfp8_e5m2_grads": {"name": "mxfp8", "grad_format": "e5m2", "mx_block": 16},
}
# The FP8 recipes (the FP4 ones, E2M1 elements, have their own float64 reference: tests/test_fp4.py).
FP8_RECIPES = [n for n, r in RECIPES.items() if r.fwd_format != "e2m1"]
ALL = {**{n: n for n in FP8_RECIPES}, **VARIANTS}
CASES = [(n, role) for n in ALL for role in ROLES]


@pytest.mark.parametrize("name,role", CASES, ids=[f"{n}-{r}" for n, r in CASES])
def test_quantize_matches_float64_reference_bit_for_bit(name, role):
    x = sample((160, 200))  # partial tiles: 200 = 128 + 72 = 6·32 + 8 columns, 160 = 128 + 32 rows
    q = quantize(x, ALL[name], role)
    ref = ref_quantize(x, ALL[name], role)
    np.testing.assert_array_equal(q.data.double().numpy(), ref["q"])
    np.testing.assert_array_equal(q.scale.double().numpy().reshape(ref["scales"].shape), ref["scales"])
    np.testing.assert_array_equal(fake_quantize(x, ALL[name], role).double().numpy(), ref["xhat"])
    r = get_recipe(ALL[name])
    if r.pow2_scales or r.scaling == "mx":  # exact powers of two: x·s and q/s are exact
        assert np.all(np.frexp(q.scale.double().numpy())[0] == 0.5)


@pytest.mark.parametrize("name", list(ALL))
def test_quant_stats_match_float64_reference(name):
    x = sample((64, 96), seed=1)
    x[:, :8] *= 1e-9  # some underflow
    for role in ROLES:
        st = quant_stats(x, quantize(x, ALL[name], role))
        ref = ref_quantize(x, ALL[name], role)
        for k in ("amax", "scale", "overflow_frac", "underflow_frac"):
            assert st[k] == pytest.approx(ref[k], rel=1e-12, abs=0), (role, k)
        assert st["sqnr_db"] == pytest.approx(ref["sqnr_db"], abs=1e-6)
        assert st["nonfinite"] == 0


@pytest.mark.parametrize("name,role,shape", [
    ("fp8_tensorwise", "input", ()), ("fp8_delayed", "grad_output", ()),
    ("fp8_rowwise", "input", (160, 1)), ("fp8_rowwise", "weight", (160, 1)),
    ("fp8_blockwise", "input", (160, 2)), ("fp8_blockwise", "grad_output", (160, 2)),
    ("fp8_blockwise", "weight", (2, 2)), ("mxfp8", "weight", (160, 7)), ("mxfp8", "input", (160, 7)),
])
def test_scale_layout_is_compact_per_recipe_and_role(name, role, shape):
    q = quantize(sample((160, 200)), name, role)
    assert tuple(q.scale.shape) == shape and q.scale.dtype == torch.float32
    assert q.scale_full().shape == (160, 200) and q.data.shape == (160, 200)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_current_scaling_maps_each_amax_to_at_most_max_so_it_never_overflows(fmt):
    # A correctly rounded s = max/amax rounds up half the time and puts amax·s an ulp above max:
    # a phantom overflow in ~9 % of tensors. Scales are rounded toward zero instead.
    g = torch.Generator().manual_seed(0)
    amax = (torch.rand(20000, generator=g) * torch.logspace(-8, 8, 20000)).reshape(-1, 1)
    r = get_recipe({"name": "fp8_rowwise", "pow2_scales": False, "fwd_format": fmt})
    s = quantize(amax, r).scale.reshape(-1, 1)
    assert bool(((amax * s) <= FMT_MAX[fmt]).all())
    exp = f32_div(np.full(amax.numel(), FMT_MAX[fmt]), amax.reshape(-1).double().numpy(), down=True)
    np.testing.assert_array_equal(s.reshape(-1).double().numpy(), exp)
    assert quant_stats(amax, quantize(amax, r))["overflow_frac"] == 0.0


def test_rowwise_scales_are_the_largest_power_of_two_not_above_max_over_amax():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 16, generator=g) * torch.logspace(-20, 20, 4000)[:, None]
    x[0] = 448.0 / 2 ** 3  # amax exactly max/2^k: s = 2^k exactly
    s = quantize(x, "fp8_rowwise", "input").scale.reshape(-1).double().numpy()
    amax = x.abs().amax(1).double().numpy()
    eps = float(np.float32(1e-12))  # amax below eps is floored: s = 2^floor(log2(448 / eps))
    np.testing.assert_array_equal(s, [pow2_floor_of_ratio(448.0, max(a, eps)) for a in amax])
    assert s[0] == 8.0
    assert np.all(np.frexp(s)[0] == 0.5)  # exact powers of two: x·s and q/s are exact


@pytest.mark.parametrize("fmt,rounding,amax,expected", [
    ("e4m3", "floor", 1.0, 256.0), ("e4m3", "floor", 500.0, 1.0), ("e4m3", "floor", 511.9, 1.0),
    ("e4m3", "floor", 512.0, 0.5), ("e4m3", "rceil", 500.0, 0.5), ("e4m3", "rceil", 448.0, 1.0),
    ("e4m3", "rceil", 448.00003, 0.5), ("e4m3", "rceil", 224.0, 2.0), ("e4m3", "rceil", 1.0, 256.0),
    ("e5m2", "floor", 1.0, 2.0 ** 15), ("e5m2", "rceil", 57344.0, 1.0), ("e5m2", "rceil", 60000.0, 0.5),
    ("e4m3", "floor", 0.0, 1.0),                          # all-zero block: s = 1
    ("e4m3", "floor", 2.0 ** -140, 2.0 ** 127),           # E8M0 exponent clamped at −127
    ("e4m3", "rceil", 2.0 ** -140, 2.0 ** 127),
])
def test_mx_e8m0_scale_rounding(fmt, rounding, amax, expected):
    r = get_recipe({"name": "mxfp8", "fwd_format": fmt, "mx_scale_rounding": rounding})
    x = torch.zeros(1, 32)
    x[0, 0] = amax
    assert float(quantize(x, r).scale.reshape(-1)[0]) == expected
    assert ref_scale(float(x[0, 0]), r, "input") == expected


def test_mx_floor_saturates_block_maxima_in_the_top_binade_and_counts_them():
    x = torch.zeros(2, 64)
    x[0, 0], x[0, 1], x[1, 40] = 500.0, 460.0, 300.0  # floor: X = 2^(8−8) = 1 for the first block
    q = quantize(x, {"name": "mxfp8", "mx_scale_rounding": "floor"})
    xh = q.dequantize()
    assert (float(xh[0, 0]), float(xh[0, 1]), float(xh[1, 40])) == (448.0, 448.0, 288.0)
    assert quant_stats(x, q)["overflow_frac"] == 2 / 128  # 500 and 460 exceed 448 after scaling
    assert int(q.clamped) == 2  # the per-cast device count agrees with the statistics
    rc = quantize(x, "mxfp8")  # the default is rceil: never saturates
    assert float(rc.dequantize()[0, 0]) == 512.0 and quant_stats(x, rc)["overflow_frac"] == 0.0
    assert int(rc.clamped) == 0


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_saturation_clamps_to_plus_minus_max_and_overflow_frac_counts_exactly(fmt):
    # A stale delayed-scaling history (amax 1) meets a tensor 1000x larger in 6 of 64 elements.
    r = get_recipe({"name": "fp8_delayed", "fwd_format": fmt})
    h = AmaxHistory(r.amax_history_len)
    h.update(torch.tensor(1.0))
    x = torch.full((2, 32), 0.25)
    x[0, :3], x[1, :3] = 1000.0, -1000.0
    q = quantize(x, r, "input", history=h)
    mx = FMT_MAX[fmt]
    assert float(q.scale) == mx and float(q.data.float().abs().max()) == mx
    xh = q.dequantize()
    assert xh[0, :3].tolist() == [1.0] * 3 and xh[1, :3].tolist() == [-1.0] * 3
    assert quant_stats(x, q)["overflow_frac"] == 6 / 64 and int(q.clamped) == 6
    np.testing.assert_array_equal(xh.double().numpy(), ref_quantize(x, r, "input", hist_amax=1.0)["xhat"])


def test_partial_tiles_take_their_scale_from_their_own_elements():
    x = torch.ones(3, 130)
    x[:, 129] = 4.0        # the last 1x2 tile of each row (K = 130 = 128 + 2)
    q = quantize(x, "fp8_blockwise", "input")
    assert q.scale.shape == (3, 2)
    assert q.scale[:, 0].tolist() == [448.0] * 3 and q.scale[:, 1].tolist() == [112.0] * 3
    w = quantize(torch.ones(130, 130), {"name": "fp8_blockwise", "weight_block": 128}, "weight")
    assert w.scale.shape == (2, 2)
    assert bool((w.dequantize() == 1.0).all())


def test_blockwise_weight_blocks_are_128x128_and_activation_tiles_1x128():
    x = torch.ones(256, 256)
    x[0, 0] = 100.0
    w, a = quantize(x, "fp8_blockwise", "weight"), quantize(x, "fp8_blockwise", "input")
    assert float(w.scale[0, 0]) == pytest.approx(4.48, rel=1e-6) and float(w.scale[1, 1]) == 448.0
    assert float(a.scale[0, 0]) == pytest.approx(4.48, rel=1e-6)
    assert bool((a.scale[1:] == 448.0).all()) and bool((a.scale[0, 1:] == 448.0).all())  # only its own tile


# --- delayed scaling history ----------------------------------------------------------------
def test_amax_history_rolls_newest_first_and_drops_the_oldest():
    h = AmaxHistory(3, "max", margin=1)
    for a in (1.0, 4.0, 2.0):
        h.update(torch.tensor(a))
    assert h.history.tolist() == [2.0, 4.0, 1.0]
    assert float(h.scale(FORMATS["e4m3"])) == 448.0 / 4.0 / 2.0
    h.update(torch.tensor(0.5))
    assert h.history.tolist() == [0.5, 2.0, 4.0]
    for _ in range(2):
        h.update(torch.tensor(0.5))
    assert h.history.tolist() == [0.5, 0.5, 0.5]  # the 4.0 has left the window
    assert float(h.scale(FORMATS["e4m3"])) == 448.0 / 0.5 / 2.0
    mr = AmaxHistory(3, "most_recent")  # most_recent: the newest entry only
    mr.update(torch.tensor(8.0))
    mr.update(torch.tensor(2.0))
    assert float(mr.scale(FORMATS["e4m3"])) == 224.0
    assert float(mr.scale(FORMATS["e5m2"])) == 57344.0 / 2.0


@pytest.mark.parametrize("bad", [0.0, float("inf"), float("nan")])
def test_amax_history_keeps_the_previous_scale_when_the_chosen_amax_is_zero_or_nonfinite(bad):
    h = AmaxHistory(2, "most_recent")
    assert float(h.scale(FORMATS["e4m3"])) == 1.0  # initial scale
    h.update(torch.tensor(bad), used_scale=torch.tensor(7.0))
    assert float(h.scale(FORMATS["e4m3"])) == 7.0


def test_delayed_scaling_updates_after_use_and_quantize_never_writes_the_history():
    r = get_recipe({"name": "fp8_delayed", "amax_history_len": 4})
    h = AmaxHistory(4)
    x1, x2 = torch.full((2, 16), 2.0), torch.full((2, 16), 8.0)
    q1 = quantize(x1, r, "input", history=h)           # empty history: seeded with x1's amax
    assert float(q1.scale) == 224.0 and h.history.tolist() == [0.0] * 4 and int(h.count) == 0
    h.update(x1.abs().amax(), used_scale=q1.scale)
    q2 = quantize(x2, r, "input", history=h)           # uses the history *before* x2: stale 2.0
    assert float(q2.scale) == 224.0 and quant_stats(x2, q2)["overflow_frac"] == 1.0
    h.update(x2.abs().amax(), used_scale=q2.scale)
    assert h.history.tolist() == [8.0, 2.0, 0.0, 0.0]
    assert float(quantize(x2, r, "input", history=h).scale) == 56.0


def test_delayed_first_step_equals_current_scaling_with_margin():
    x = sample((32, 64), outliers=False)
    r = get_recipe({"name": "fp8_delayed", "margin": 3})
    q = quantize(x, r, "input", history=AmaxHistory(16, margin=3))
    cur = quantize(x, "fp8_tensorwise", "input")
    assert float(q.scale) == float(cur.scale) / 8
    np.testing.assert_array_equal(fake_quantize(x, r).numpy(), q.dequantize().numpy())  # §10: as of a first step


# --- stats ----------------------------------------------------------------------------------
def test_underflow_counts_nonzeros_flushed_to_zero_over_the_nonzero_count():
    x = torch.zeros(1, 64)
    x[0, :32] = 1.0
    x[0, :16] = 1e-6  # s = 448: 4.5e-4 < half the smallest subnormal 2^-10 -> 0
    st = quant_stats(x, quantize(x, "fp8_tensorwise"))
    assert st["underflow_frac"] == 16 / 32 and st["overflow_frac"] == 0.0


def test_sqnr_of_exactly_representable_values_is_the_cap_and_matches_the_formula_otherwise():
    x = torch.tensor([[448.0, -224.0, 1.75, 0.0] * 4])
    st = quant_stats(x, quantize(x, "fp8_tensorwise"))
    assert st["sqnr_db"] == 200.0 and st["overflow_frac"] == 0.0
    assert quant_stats(torch.zeros(2, 16), quantize(torch.zeros(2, 16), "mxfp8"))["sqnr_db"] == 200.0
    y = sample((32, 128), outliers=False)
    xh = fake_quantize(y, "fp8_tensorwise").double()
    expected = 20 * math.log10(float(y.double().norm() / (y.double() - xh).norm()))
    got = quant_stats(y, quantize(y, "fp8_tensorwise"))["sqnr_db"]
    assert got == pytest.approx(expected, abs=1e-9) and 20 < got < 40


@pytest.mark.parametrize("name", FP8_RECIPES)
def test_nonfinite_inputs_propagate_and_are_counted(name):
    x = sample((4, 256), outliers=False)
    x[0, 3], x[2, 200] = float("nan"), float("inf")
    for role in ROLES:
        q = quantize(x, name, role)
        xh = q.dequantize()
        fmt = get_recipe(name).format_for(role)
        assert math.isnan(float(xh[0, 3]))
        assert math.isinf(float(xh[2, 200])) if fmt == "e5m2" else math.isnan(float(xh[2, 200]))
        assert int((~torch.isfinite(xh)).sum()) == 2           # nothing else is poisoned
        assert bool(torch.isfinite(q.scale).all()) and bool((q.scale > 0).all())
        st = quant_stats(x, q)
        assert st["nonfinite"] == 2 and math.isfinite(st["sqnr_db"]) and math.isnan(st["amax"])


def test_e5m2_grads_have_more_range_and_less_precision_than_e4m3():
    x = sample((64, 128), outliers=False)
    assert (x - fake_quantize(x, "fp8_tensorwise", "grad_output")).norm() > (x - fake_quantize(x, "fp8_tensorwise")).norm()
    tiny = torch.full((1, 16), 1e-7)
    tiny[0, 0] = 1.0  # 1e-7 · 57344 survives in E5M2; 1e-7 · 448 flushes to 0 in E4M3
    assert quant_stats(tiny, quantize(tiny, "fp8_tensorwise", "grad_output"))["underflow_frac"] == 0.0
    assert quant_stats(tiny, quantize(tiny, "fp8_tensorwise", "input"))["underflow_frac"] == 15 / 16


def test_fake_quantize_returns_fp32_and_rejects_bad_shapes_and_roles():
    x = sample((16, 64), outliers=False).bfloat16()
    out = fake_quantize(x, "fp8_blockwise")
    assert out.dtype == torch.float32 and out.shape == x.shape
    np.testing.assert_array_equal(out.double().numpy(), ref_quantize(x, "fp8_blockwise", "input")["xhat"])
    with pytest.raises(ValueError, match="2-D"):
        fake_quantize(torch.ones(2, 3, 16), "fp8_tensorwise")
    with pytest.raises(ValueError, match="valid: input, weight, grad_output"):
        fake_quantize(torch.ones(2, 16), "fp8_tensorwise", role="activation")


# --- recipes --------------------------------------------------------------------------------
def test_named_recipes_match_the_design_table():
    R = RECIPES
    assert {n: (r.scaling, r.fwd_format, r.grad_format) for n, r in R.items()} == {
        "fp8_delayed": ("delayed", "e4m3", "e5m2"), "fp8_tensorwise": ("tensorwise", "e4m3", "e5m2"),
        "fp8_rowwise": ("rowwise", "e4m3", "e4m3"), "fp8_blockwise": ("blockwise", "e4m3", "e4m3"), "mxfp8": ("mx", "e4m3", "e4m3"),
        "nvfp4": ("nvfp4", "e2m1", "e2m1"), "mxfp4": ("mxfp4", "e2m1", "e2m1")}
    d, b = R["fp8_delayed"], R["fp8_blockwise"]
    assert (d.amax_history_len, d.amax_compute_algo, d.margin) == (16, "max", 0)
    assert R["fp8_rowwise"].pow2_scales and not b.pow2_scales and (b.act_block, b.weight_block) == (128, 128)
    assert (R["mxfp8"].mx_block, R["mxfp8"].mx_scale_rounding) == (32, "rceil")  # DESIGN.md §5, issue 11 defect 1
    assert d.format_for("grad_output") == "e5m2" and d.format_for("weight") == d.format_for("input") == "e4m3"


def test_get_recipe_accepts_names_recipes_and_hydra_mappings_with_extra_keys():
    from omegaconf import OmegaConf

    r = RECIPES["fp8_delayed"]
    assert get_recipe("fp8_delayed") == r and get_recipe(r) is r
    got = get_recipe(OmegaConf.create({"name": "fp8_delayed", "engine": "reference", "margin": 2,
                                       "keep_high_precision": {"patterns": ["lm_head"]}}))
    assert got.margin == 2 and got.amax_history_len == 16 and got.grad_format == "e5m2"
    assert get_recipe({"name": "fp8_blockwise", "eps": 1}).eps == 1.0


@pytest.mark.parametrize("spec,match", [
    ("fp4", "unknown FP8 recipe 'fp4'; valid: fp8_delayed, fp8_tensorwise, fp8_rowwise, fp8_blockwise, mxfp8"),
    ({"name": "bf16"}, "unknown FP8 recipe 'bf16'; valid: fp8_delayed"),
    ({"engine": "te"}, "no name; valid: fp8_delayed"),
    ({"name": "mxfp8", "mx_scale_rounding": "nearest"}, "mx_scale_rounding='nearest' .*valid: floor, rceil"),
    ({"name": "fp8_tensorwise", "scaling": "nvfp4"}, "scaling='nvfp4' .*valid: delayed, tensorwise"),
    ({"name": "fp8_delayed", "amax_compute_algo": "mean"}, "valid: max, most_recent"),
    ({"name": "fp8_tensorwise", "fwd_format": "e3m4"}, "valid: e4m3, e5m2"),
    ({"name": "fp8_blockwise", "act_block": 0}, "act_block=0 .*positive"),
    ({"name": "fp8_delayed", "margin": 0.5}, "margin=0.5 .*not a valid int"),
])
def test_get_recipe_rejects_bad_values_naming_them_and_the_choices(spec, match):
    with pytest.raises(ValueError, match=match):
        get_recipe(spec)


@pytest.mark.parametrize("name,out_f,in_f,ok", [
    ("fp8_tensorwise", 128, 256, True), ("fp8_tensorwise", 100, 256, False), ("fp8_rowwise", 128, 8, False),
    ("fp8_blockwise", 48, 80, True), ("mxfp8", 64, 96, True), ("mxfp8", 48, 64, False), ("mxfp8", 64, 48, False),
])
def test_validate_shape_explains_impossible_shapes(name, out_f, in_f, ok):
    reason = validate_shape(name, out_f, in_f)
    assert (reason is None) if ok else ("divisible by 16" in reason or "mx_block=32" in reason)
