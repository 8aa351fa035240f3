"""FP4 quantizers (nvfp4, mxfp4), E2M1 rounding, stochastic rounding, the Hadamard transform and
the FP4 stats against the independent float64 reference in tests/fp4_reference.py."""
import math

import numpy as np
import pytest
import torch

import fp4_reference as ref
from bench.core.errors import BadInput
from bench.precision.formats.e2m1 import (E2M1_MAX, fake_quantize_fp4, fp4_shape_error, get_fp4_recipe, quantize_fp4,
                                 round_e2m1, round_e2m1_stochastic, validate_fp4_linear)
from bench.precision.stats import quant_stats as fp4_quant_stats, zero_block_event
from bench.precision.formats.hadamard import TE_WGRAD_SIGNS, rht, rht_inverse, rht_matrix

ROLES = ("input", "weight", "grad_output")
NV = {"nvfp4": "nvfp4", "nvfp4_1d_weights": {"name": "nvfp4", "weight_2d": False}}


def sample(shape, seed=0):
    """Columns over six decades (blocks differ), a zero block, a negative zero, and an outlier
    large enough to flush the smallest blocks of the tensor in nvfp4."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.logspace(-4, 2, shape[1])[None, :]
    x[:16, :32] = 0.0
    x[-1, 3] = -0.0
    x[5, -1] = 4e5
    return x


def n(t):
    return t.double().numpy()


def assert_bits(a, b):
    np.testing.assert_array_equal(np.nan_to_num(a, nan=1234.5), np.nan_to_num(b, nan=1234.5))
    assert np.array_equal(np.signbit(a), np.signbit(b))


# --- E2M1 rounding ---------------------------------------------------------------------------
@pytest.mark.parametrize("v,expected", [
    (0.25, 0.0), (0.75, 1.0), (1.25, 1.0), (1.75, 2.0), (2.5, 2.0), (3.5, 4.0), (5.0, 4.0),  # DESIGN ties
    (0.2500001, 0.5), (0.7499999, 0.5), (4.9999995, 4.0), (5.0000005, 6.0), (6.0, 6.0),
    (-0.25, -0.0), (-2.5, -2.0), (-5.0, -4.0), (-6.0, -6.0), (0.0, 0.0),
])
def test_e2m1_round_to_nearest_even_ties_table(v, expected):
    got = float(round_e2m1(torch.tensor([v], dtype=torch.float32))[0])
    assert got == expected and math.copysign(1, got) == math.copysign(1, expected)
    assert float(ref.e2m1(np.float32(v))) == expected


def test_e2m1_rounding_matches_reference_on_every_midpoint_and_random_values():
    mids = (ref.E2M1[1:] + ref.E2M1[:-1]) / 2
    vals = np.concatenate([mids, np.nextafter(mids.astype(np.float32), 0), np.nextafter(mids.astype(np.float32), 7),
                           ref.E2M1, np.random.default_rng(0).uniform(-6, 6, 20000)]).astype(np.float32)
    vals = np.concatenate([vals, -vals])
    assert_bits(n(round_e2m1(torch.from_numpy(vals))), ref.e2m1(vals.astype(np.float64)))


def test_e2m1_keeps_nan():
    assert math.isnan(float(round_e2m1(torch.tensor([float("nan")]))[0]))


# --- nvfp4 and mxfp4 against the float64 reference ------------------------------------------
@pytest.mark.parametrize("name", list(NV))
@pytest.mark.parametrize("role", ROLES)
def test_nvfp4_matches_float64_reference_bit_for_bit(name, role):
    x = sample((48, 96))
    q = quantize_fp4(x, NV[name], role)
    tile = (16, 16) if (role == "weight" and name == "nvfp4") else (1, 16)
    assert q.tile == tile
    r = ref.ref_nvfp4(n(x), tile)
    assert float(q.global_encode) == r["g"]
    np.testing.assert_array_equal(n(q.decode), r["d"])
    np.testing.assert_array_equal(n(q.encode), r["e"])
    assert_bits(n(q.q), r["q"])
    assert_bits(n(q.dequantize()), r["xhat"])
    assert_bits(n(fake_quantize_fp4(x, NV[name], role)), r["xhat"])
    assert (r["d"] == 0).any() and (r["d"] > 0).any()  # the sample does flush blocks


@pytest.mark.parametrize("rounding", ["floor", "rceil"])
@pytest.mark.parametrize("role", ROLES)
def test_mxfp4_matches_float64_reference_bit_for_bit(rounding, role):
    x = sample((8, 128))
    x[6, 32:64] = torch.randn(32) * 2.0 ** -140   # fp32 subnormals: E8M0 exponent clamped at −127
    x[7, :32] = 6.0 * 2.0 ** 5                     # rceil fits exactly, floor saturates
    x[7, 1] = 7.5 * 2.0 ** 5
    spec = {"name": "mxfp4", "mx_scale_rounding": rounding}
    q = quantize_fp4(x, spec, role)
    r = ref.ref_mxfp4(n(x), rounding)
    assert q.tile == (1, 32) and float(q.global_encode) == 1.0
    np.testing.assert_array_equal(n(q.decode), r["X"])
    assert_bits(n(q.q), r["q"])
    assert_bits(n(q.dequantize()), r["xhat"])
    np.testing.assert_array_equal(q.saturated.numpy(), r["clamped"])
    assert r["clamped"].any()
    assert np.all(np.frexp(r["X"])[0] == 0.5)  # powers of two


@pytest.mark.parametrize("rounding,amax,X", [
    ("floor", 6.0, 1.0), ("floor", 7.9, 1.0), ("floor", 8.0, 2.0), ("floor", 1.0, 0.25), ("floor", 0.0, 1.0),
    ("rceil", 6.0, 1.0), ("rceil", 6.0000005, 2.0), ("rceil", 3.0, 0.5), ("rceil", 3.0000002, 1.0),
    ("floor", 2.0 ** -140, 2.0 ** -127), ("rceil", 2.0 ** -140, 2.0 ** -127),
])
def test_mxfp4_e8m0_scale(rounding, amax, X):
    x = torch.zeros(1, 32)
    x[0, 0] = amax
    q = quantize_fp4(x, {"name": "mxfp4", "mx_scale_rounding": rounding})
    assert float(q.decode[0, 0]) == X
    assert float(ref.ref_mxfp4(n(x), rounding)["X"][0, 0]) == X


def test_nvfp4_global_scale_is_one_for_a_zero_or_nonfinite_amax_and_zero_stays_zero():
    z = quantize_fp4(torch.zeros(2, 16))
    assert float(z.global_encode) == 1.0 and bool((z.dequantize() == 0).all())
    x = torch.ones(2, 16)
    x[0, 3], x[1, 5] = float("inf"), float("nan")
    q = quantize_fp4(x)
    xh = q.dequantize()
    assert float(q.global_encode) == 1.0
    assert math.isnan(float(xh[0, 3])) and math.isnan(float(xh[1, 5]))   # E2M1 has no inf: NaN
    fin = torch.isfinite(x)
    assert bool(torch.isfinite(xh[fin]).all())
    assert_bits(n(xh), ref.ref_nvfp4(n(x), (1, 16))["xhat"])
    assert fp4_quant_stats(x, q)["nonfinite"] == 2


def test_nvfp4_fp32_operation_order_is_te_order():
    # Find a block amax for which g·(1/6) and g/6 give different decode scales: the test then
    # fails if the implementation computes block_amax·g/6 in any other order.
    inv6 = float(ref.f32(1 / 6))
    rng = np.random.default_rng(1)
    for _ in range(200000):
        amax = float(ref.f32(rng.uniform(1, 2) * 2.0 ** rng.integers(-5, 5)))
        g = float(ref.f32(2688 / amax))
        te, alt = float(ref.f32(g * inv6)), float(ref.f32(g / 6))
        if te == alt:
            continue
        # a block amax b whose product with te sits exactly on an E4M3 rounding midpoint
        for mid in (ref.E4M3[1:] + ref.E4M3[:-1]) / 2:
            b = float(ref.f32(mid / te))
            if b < amax and ref.f32(b * te) != ref.f32(b * alt) and \
                    ref.e4m3(ref.f32(b * te)) != ref.e4m3(ref.f32(b * alt)):
                break
        else:
            continue
        break
    else:
        pytest.fail("no distinguishing block found")
    x = torch.zeros(2, 16)
    x[0, 0], x[1, 0] = amax, b
    d = quantize_fp4(x).decode
    assert float(d[1, 0]) == float(ref.ref_nvfp4(n(x), (1, 16))["d"][1, 0]) == float(ref.e4m3(ref.f32(b * te)))


def test_nvfp4_16x16_weight_tiles_are_the_same_tiles_in_w_and_wt():
    w = sample((64, 96), seed=3)
    a, b = quantize_fp4(w, "nvfp4", "weight"), quantize_fp4(w.t().contiguous(), "nvfp4", "weight")
    assert_bits(n(a.dequantize()).T, n(b.dequantize()))


# --- outliers, flushed blocks, saturation, stats ---------------------------------------------
def ref_stats(x, r, tile):
    xs, xh = n(x), r["xhat"]
    nz = xs != 0
    blocks = [(np.abs(xs[rs, cs]).max() > 0, not np.any(xh[rs, cs] != 0)) for rs, cs, _ in ref.tiles(xs.shape, tile)]
    nz_blocks = sum(a for a, _ in blocks)
    flushed = sum(a and f for a, f in blocks)
    v = np.abs(xs * np.kron(r["e"], np.ones(tile)))
    in_flushed = np.kron(r["d"] == 0, np.ones(tile)).astype(bool)
    return {"overflow_frac": float(((v >= 7) & ~in_flushed).sum() / xs.size),
            "underflow_frac": float((nz & (xh == 0)).sum() / nz.sum()),
            "zero_block_frac": flushed / nz_blocks,
            "scale_sat_frac": float((r["raw"] > 464).sum() / r["raw"].size),
            "sqnr_db": 20 * math.log10(np.linalg.norm(xs) / np.linalg.norm(xs - xh))}


def test_an_outlier_flushes_whole_blocks_and_the_stats_count_them():
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(4)) * 1e-3
    x[3, 7] = 1e5   # sets g: blocks with amax < 2^-10·1e5/448 ≈ 0.22 get d = 0
    q = quantize_fp4(x)
    r = ref.ref_nvfp4(n(x), (1, 16))
    st = fp4_quant_stats(x, q)
    exp = ref_stats(x, r, (1, 16))
    assert st["zero_block_frac"] == exp["zero_block_frac"] == (128 - 1) / 128
    assert (r["d"] == 0).sum() == 127
    assert bool((q.dequantize()[x.abs() < 1] == 0).all()) and not bool(q.dequantize().isnan().any())
    for k in ("overflow_frac", "underflow_frac", "scale_sat_frac"):
        assert st[k] == pytest.approx(exp[k], abs=0, rel=1e-12), k
    assert st["sqnr_db"] == pytest.approx(exp["sqnr_db"], abs=1e-6)
    ev = zero_block_event(st, step=7, where="numerics/l/input", threshold=0.01)
    assert (ev.kind, ev.step, ev.stat, ev.value, ev.threshold) == ("underflow", 7, "zero_block_frac", st["zero_block_frac"], 0.01)
    assert zero_block_event(st, step=7, where="w", threshold=0.999) is None


@pytest.mark.parametrize("spec,role", [("nvfp4", "input"), ("nvfp4", "weight"),
                                       ({"name": "nvfp4", "weight_2d": False}, "weight")])
def test_nvfp4_stats_match_reference_on_mixed_data(spec, role):
    x = sample((48, 96), seed=5)
    q = quantize_fp4(x, spec, role)
    tile = q.tile
    st, exp = fp4_quant_stats(x, q), ref_stats(x, ref.ref_nvfp4(n(x), tile), tile)
    for k in ("overflow_frac", "underflow_frac", "zero_block_frac", "scale_sat_frac"):
        assert st[k] == pytest.approx(exp[k], abs=0, rel=1e-12), k
    assert st["sqnr_db"] == pytest.approx(exp["sqnr_db"], abs=1e-6)
    assert st["zero_block_frac"] > 0 and st["amax"] == 4e5


def test_own_amax_never_counts_as_saturation_or_overflow_but_a_stale_global_amax_does():
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(6))
    st = fp4_quant_stats(x, quantize_fp4(x))
    assert st["scale_sat_frac"] == 0 and st["overflow_frac"] == 0
    # an amax whose own block lands an ulp above 448 through the roundings of g and g·(1/6)
    amax = next(a for a in ref.f32(np.random.default_rng(0).uniform(1, 2, 1000))
                if ref.ref_nvfp4(np.full((1, 16), a), (1, 16))["raw"][0, 0] > 448)
    y = torch.full((1, 16), float(amax))
    st = fp4_quant_stats(y, quantize_fp4(y))
    assert st["scale_sat_frac"] == 0 and st["overflow_frac"] == 0 and st["sqnr_db"] == 200.0
    stale = torch.tensor(float(x.abs().max()) / 8)     # an amax reduced elsewhere, 8x too small
    q = quantize_fp4(x, global_amax=stale)
    r = ref.ref_nvfp4(n(x), (1, 16), global_amax=float(stale))
    assert_bits(n(q.dequantize()), r["xhat"])
    st = fp4_quant_stats(x, q)
    exp = ref_stats(x, r, (1, 16))
    assert st["scale_sat_frac"] == exp["scale_sat_frac"] > 0.1
    assert st["overflow_frac"] == pytest.approx(exp["overflow_frac"], rel=1e-12) and st["overflow_frac"] > 0


def test_mxfp4_floor_saturates_the_top_binade_and_rceil_does_not():
    x = torch.zeros(1, 32)
    x[0, :3] = torch.tensor([7.5, 6.5, 5.0])   # X = 2^(2−2) = 1 under floor
    fl = quantize_fp4(x, "mxfp4")
    assert fl.dequantize()[0, :3].tolist() == [6.0, 6.0, 4.0]
    assert fp4_quant_stats(x, fl)["overflow_frac"] == 1 / 32   # 7.5 would round to 8; 6.5 rounds to 6
    rc = quantize_fp4(x, {"name": "mxfp4", "mx_scale_rounding": "rceil"})
    assert rc.dequantize()[0, :3].tolist() == [8.0, 6.0, 4.0]
    assert fp4_quant_stats(x, rc)["overflow_frac"] == 0


# --- shapes and recipes ----------------------------------------------------------------------
@pytest.mark.parametrize("spec,role,shape", [("nvfp4", "input", (4, 24)), ("nvfp4", "weight", (24, 32)),
                                             ("nvfp4", "weight", (32, 24)), ("mxfp4", "grad_output", (3, 48))])
def test_shapes_not_a_multiple_of_the_tile_are_refused_with_one_line(spec, role, shape):
    why = fp4_shape_error(spec, role, shape)
    assert why and "\n" not in why and str(shape) in why
    with pytest.raises(BadInput, match="divisible by"):
        quantize_fp4(torch.ones(shape), spec, role)


def test_whole_tile_shapes_are_accepted():
    assert fp4_shape_error("nvfp4", "input", (3, 32)) is None        # rows are free for 1x16 tiles
    assert fp4_shape_error("nvfp4", "weight", (16, 32)) is None
    assert fp4_shape_error("mxfp4", "weight", (5, 64)) is None
    assert validate_fp4_linear("nvfp4", 48, 32) is None
    why = validate_fp4_linear("mxfp4", 48, 32)
    assert "out_features=48" in why and "in_features" not in why.split("(")[1]


def test_recipe_defaults_follow_te_nvfp4blockscaling_and_plain_ocp_mx():
    nv, mx = get_fp4_recipe("nvfp4"), get_fp4_recipe("mxfp4")
    assert (nv.weight_2d, nv.rht, nv.stochastic_rounding, nv.block) == (True, True, True, 16)
    assert (mx.weight_2d, mx.rht, mx.stochastic_rounding, mx.block, mx.mx_scale_rounding) == (False, False, False, 32, "floor")
    r = get_fp4_recipe({"name": "nvfp4", "rht": False, "engine": "auto", "keep_high_precision": {}})
    assert not r.rht and r.stochastic_rounding


@pytest.mark.parametrize("spec,match", [("nvfp8", "unknown FP4 recipe 'nvfp8'; valid: nvfp4, mxfp4"),
                                        ({"name": "nvfp4", "rht": "yes"}, "rht='yes' for nvfp4; valid: true, false"),
                                        ({"name": "mxfp4", "mx_scale_rounding": "up"}, "valid: floor, rceil"),
                                        ({"name": "mxfp4", "weight_2d": True}, "weight_2d=true for mxfp4")])
def test_bad_recipe_values_are_one_line_naming_the_choices(spec, match):
    with pytest.raises(BadInput, match=match.replace("(", r"\(")):
        get_fp4_recipe(spec)


# --- stochastic rounding ---------------------------------------------------------------------
def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour():
    v = torch.tensor([0.1, 0.3, 0.74, 1.2, 1.9, 2.2, 2.5, 3.7, 4.5, 5.9, 6.0, -0.6, -3.3, -5.0, 0.0, 2.0])
    draws = 20000
    g = torch.Generator().manual_seed(0)
    out = round_e2m1_stochastic(v.expand(draws, -1).contiguous(), g)
    vs = v.double().numpy()
    grid = np.concatenate([-ref.E2M1[::-1], ref.E2M1])
    lo = np.array([grid[grid <= a].max() for a in vs])
    hi = np.array([grid[grid >= a].min() for a in vs])
    o = n(out)
    assert np.all((o == lo) | (o == hi))
    p = np.where(hi > lo, (vs - lo) / np.where(hi > lo, hi - lo, 1), 0)
    sd = (hi - lo) * np.sqrt(p * (1 - p) / draws)
    assert np.all(np.abs(o.mean(0) - vs) <= 5 * sd + 1e-12)
    assert abs(o.mean(0)[2] - 0.74) < 0.02 and float(round_e2m1(v)[2]) == 0.5   # RNE would be biased


def test_stochastic_quantization_is_unbiased_given_the_scales_and_seeded():
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    q0 = quantize_fp4(x, role="grad_output")
    draws = [quantize_fp4(x, role="grad_output", stochastic=True,
                          generator=torch.Generator().manual_seed(s)).dequantize() for s in range(400)]
    mean = torch.stack(draws).mean(0)
    inside = (x * q0.expand(q0.encode)).abs() <= E2M1_MAX   # the clamp is the only bias
    step = (q0.expand(q0.decode) / q0.global_encode) * 2     # largest E2M1 gap times the scale
    assert bool(((mean - x).abs()[inside] <= 5 * step[inside] / math.sqrt(400)).all())
    assert float((mean - x)[inside].mean().abs()) < 2e-3
    a = quantize_fp4(x, role="grad_output", stochastic=True, generator=torch.Generator().manual_seed(3)).q
    b = quantize_fp4(x, role="grad_output", stochastic=True, generator=torch.Generator().manual_seed(3)).q
    assert torch.equal(a, b) and not torch.equal(a, q0.q)


# --- random Hadamard transform ---------------------------------------------------------------
def test_rht_uses_te_signs_and_is_orthogonal():
    assert TE_WGRAD_SIGNS == (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)
    t = rht_matrix()
    np.testing.assert_array_equal(n(t), ref.hadamard_T())
    assert torch.equal(t @ t.t(), torch.eye(16))   # exact: entries ±1/4, sums of 16 terms


def test_rht_round_trip_and_dot_products_along_the_transformed_dim():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(8, 64, generator=g), torch.randn(5, 64, generator=g)
    ta = rht(a)
    expected = (a.double().numpy().reshape(-1, 16) @ ref.hadamard_T()).reshape(8, 64)
    np.testing.assert_allclose(n(ta), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(rht_inverse(ta), a, rtol=0, atol=2e-6)
    torch.testing.assert_close(ta @ rht(b).t(), a @ b.t(), rtol=1e-5, atol=1e-5)
    assert torch.allclose(ta.norm(dim=1), a.norm(dim=1), rtol=1e-6)
    with pytest.raises(ValueError, match="divisible by 16"):
        rht(torch.ones(2, 24))


def test_rht_spreads_an_outlier_over_its_block():
    x = torch.full((1, 16), 0.01)
    x[0, 4] = 10.0
    y = rht(x)
    # every output is (±10 ± 0.01 ± ... ) / 4: the block amax drops from 10 to at most 2.5375
    assert bool(((y.abs() >= (10 - 0.15) / 4 - 1e-6) & (y.abs() <= (10 + 0.15) / 4 + 1e-6)).all())
