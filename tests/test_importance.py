"""Every IS mode and option, weights and is/* metrics, against a direct loop of DESIGN.md §6.

The reference walks sequences and tokens with python floats in float64: ρ = exp(clamp(r, ±20)),
sequence ratios exp(clamp(Σ_t r)) and exp(clamp(mean_t r)), the veto on the unclamped ρ, and it
records which tokens a band or the veto masked out, so the masking fractions are checked against
that record rather than against the weights' zeros. batch_normalize and
is/rollout_is_eff_sample_size follow verl (verl/trainer/ppo/rollout_corr_helper.py): sequence
modes normalize by the mean over non-empty sequences of the sequence weight; the ESS is
1 / masked_mean((w_c / (masked_mean(w_c) + 1e-8))²) with w_c the untruncated ratio clamped to [1/C, C]."""
import math

import numpy as np
import pytest
import torch

from bench.rl.importance import BAND_MODES, IS_KEYS, IS_MODES, importance_weights

C = 20.0
MODES = ["none", "tis", "icepop", "seq_tis", "seq_mask", "geo_mask"]
SEQ = ("seq_tis", "seq_mask")


def clamp(x):
    return max(-C, min(C, x))


def direct(lp_g, lp_t, mask, mode, cap=2.0, lo=0.5, hi=2.0, veto=None, batch_normalize=False, lower_cap=None):
    """Reference weights [B, T] (float64 numpy) and metrics dict for one call."""
    lg, lt, m = lp_g.double().numpy(), lp_t.double().numpy(), mask.numpy()
    B, T = m.shape
    w = np.zeros((B, T))
    masked = np.zeros((B, T), dtype=bool)
    vetoed = [False] * B
    raw, untrunc, seq_w = [], [], []
    for i in range(B):
        idx = [j for j in range(T) if m[i, j]]
        r = [lt[i, j] - lg[i, j] for j in idx]
        rho = [math.exp(clamp(x)) for x in r]
        raw += rho
        if not idx:
            continue
        s = math.exp(clamp(sum(r)))
        geo = math.exp(clamp(sum(r) / len(r)))
        untrunc += [s] * len(idx) if mode in SEQ else rho
        for k, j in enumerate(idx):
            if mode == "none":
                w[i, j] = 1.0
            elif mode == "tis":
                w[i, j] = min(rho[k], cap) if lower_cap is None else max(min(rho[k], cap), lower_cap)
            elif mode == "icepop":
                w[i, j], masked[i, j] = (rho[k], False) if lo <= rho[k] <= hi else (0.0, True)
            elif mode == "seq_tis":
                w[i, j] = min(s, cap)
            elif mode == "seq_mask":
                w[i, j], masked[i, j] = (s, False) if lo <= s <= hi else (0.0, True)
            elif mode == "geo_mask":
                w[i, j], masked[i, j] = (min(rho[k], cap), False) if lo <= geo <= hi else (0.0, True)
        if veto is not None and any(math.exp(x) < veto for x in r):
            vetoed[i] = True
            for j in idx:
                w[i, j], masked[i, j] = 0.0, True
        seq_w.append(w[i, idx[0]])
    vals = [w[i, j] for i in range(B) for j in range(T) if m[i, j]]
    if batch_normalize and vals and sum(vals) > 0:
        mean = np.mean(seq_w) if mode in SEQ else sum(vals) / len(vals)   # verl: each sequence once
        w = w / mean
        vals = [x / mean for x in vals]
    if not vals:
        return w, {k: math.nan for k in IS_KEYS}
    high = hi if mode in ("icepop", "seq_mask", "geo_mask") else cap
    low = lower_cap if lower_cap is not None else lo
    seqs = [i for i in range(B) if m[i].any()]
    mean_w = np.mean(vals)
    wc = [min(max(x, 1 / high), high) for x in untrunc]
    met = {
        "raw_mean": np.mean(raw), "raw_std": np.std(raw), "raw_min": min(raw), "raw_max": max(raw),
        "weight_mean": mean_w, "weight_std": np.std(vals), "weight_min": min(vals), "weight_max": max(vals),
        "ess": 1.0 / np.mean([(x / mean_w) ** 2 for x in vals]) if mean_w > 0 else 0.0,
        "frac_high": np.mean([x > high for x in raw]), "frac_low": np.mean([x < low for x in raw]),
        "token_masked_frac": masked[m].mean(),
        "seq_masked_frac": np.mean([masked[i][m[i]].all() for i in seqs]),
        "veto_seq_frac": np.mean([vetoed[i] for i in seqs]),
        "rollout_is_eff_sample_size": 1.0 / np.mean([(x / (np.mean(wc) + 1e-8)) ** 2 for x in wc]),
    }
    return w, met


def make(B=9, T=7, scale=0.6, seed=0, dtype=torch.float32, extreme=False):
    """Ragged masks: sequence 0 has one valid token, sequence 1 none. extreme: |r| up to 50."""
    g = torch.Generator().manual_seed(seed)
    lp_g = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    lp_t = lp_g + scale * torch.randn(B, T, generator=g, dtype=torch.float64)
    if extreme:
        lp_t[2, :3] = lp_g[2, :3] - torch.tensor([50.0, 30.0, 21.0])
        lp_g[3, :2] = lp_t[3, :2] - torch.tensor([50.0, 25.0])
        lp_t[4, :] = lp_g[4, :] + 9.0                   # Σ_t r = 63: the sequence clamp bites
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0], lengths[1] = 1, 0
    lengths[2:5] = T
    return lp_g.to(dtype), lp_t.to(dtype), torch.arange(T)[None] < lengths[:, None]


INPUTS = [
    ("float32_mild", dict(scale=0.3)),
    ("float32_wide", dict(scale=0.9, seed=1)),
    ("float32_extreme_ratios", dict(scale=0.6, extreme=True)),
    ("bfloat16_inputs", dict(scale=0.5, dtype=torch.bfloat16, seed=2)),
    ("bfloat16_extreme_ratios", dict(scale=0.5, dtype=torch.bfloat16, extreme=True, seed=3)),
]
OPTIONS = [
    ("plain", {}),
    ("veto", dict(veto=0.3)),
    ("veto_tiny_threshold_below_clamp", dict(veto=1e-15)),
    ("batch_normalize", dict(batch_normalize=True)),
    ("veto_and_batch_normalize", dict(veto=0.3, batch_normalize=True)),
    ("narrow_band_small_cap", dict(cap=1.2, lo=0.8, hi=1.25)),
    ("wide_band_large_cap", dict(cap=1e6, lo=1e-6, hi=1e6)),
]
CASES = [(f"{mode}-{o}-{i}", mode, okw, ikw) for mode in MODES for o, okw in OPTIONS for i, ikw in INPUTS]
CASES += [(f"tis-lower_cap_{lc}-{i}", "tis", dict(lower_cap=lc), ikw)
          for lc in (0.8, 0.0) for i, ikw in INPUTS]


@pytest.mark.parametrize("mode,options,inputs", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_weights_and_metrics_match_the_direct_formula(mode, options, inputs):
    lp_g, lp_t, mask = make(**inputs)
    w, met = importance_weights(lp_g, lp_t, mask, mode=mode, **options)
    ref_w, ref_met = direct(lp_g, lp_t, mask, mode, **options)
    assert w.dtype == torch.float32 and w.shape == mask.shape and not w.requires_grad
    np.testing.assert_allclose(w.double().numpy(), ref_w, rtol=2e-7, atol=0)
    assert (w[~mask] == 0).all()
    assert list(met) == [f"is/{k}" for k in IS_KEYS] and all(type(v) is float for v in met.values())
    for k in IS_KEYS:
        assert met[f"is/{k}"] == pytest.approx(float(ref_met[k]), rel=1e-9, abs=1e-12), k


def test_registry_holds_every_design_mode_in_order():
    assert list(IS_MODES) == MODES and BAND_MODES == {"icepop", "seq_mask", "geo_mask"}


# ---- behaviour of each mode on hand-made inputs -----------------------------------------------------

def close(w, expected):
    np.testing.assert_allclose(w.double().numpy(), np.array(expected, dtype=float), rtol=1e-6, atol=1e-12)


def ratios(*rows):
    """lp_g = 0 and lp_t = log ρ for rows of ratios (None = padding)."""
    T = max(len(r) for r in rows)
    rho = torch.tensor([[1.0 if x is None else x for x in r] + [1.0] * (T - len(r)) for r in rows],
                       dtype=torch.float64)
    mask = torch.tensor([[x is not None for x in r] + [False] * (T - len(r)) for r in rows])
    return torch.zeros_like(rho), rho.log(), mask


def test_tis_caps_token_ratio_at_C():
    lp_g, lp_t, mask = ratios([0.1, 1.5, 3.0, 100.0])
    w, met = importance_weights(lp_g, lp_t, mask, mode="tis", cap=2.0)
    close(w, [[0.1, 1.5, 2.0, 2.0]])
    assert met["is/frac_high"] == 0.5 and met["is/frac_low"] == 0.25 and met["is/token_masked_frac"] == 0


def test_tis_lower_cap_clamps_from_below_and_sets_frac_low():
    lp_g, lp_t, mask = ratios([0.1, 0.5, 0.9, 3.0])
    w, met = importance_weights(lp_g, lp_t, mask, mode="tis", cap=2.0, lower_cap=0.6)
    close(w, [[0.6, 0.6, 0.9, 2.0]])
    assert met["is/frac_low"] == 0.5


def test_icepop_zeroes_tokens_outside_the_band_and_keeps_the_rest_unclipped():
    lp_g, lp_t, mask = ratios([0.4, 0.5, 1.7, 2.0, 2.1])
    w, met = importance_weights(lp_g, lp_t, mask, mode="icepop", lo=0.5, hi=2.0)
    close(w, [[0.0, 0.5, 1.7, 2.0, 0.0]])   # band edges are inclusive
    assert met["is/token_masked_frac"] == 0.4 and met["is/seq_masked_frac"] == 0.0


def test_seq_tis_gives_every_token_one_capped_sequence_ratio():
    lp_g, lp_t, mask = ratios([1.2, 1.1, None], [2.0, 3.0, 0.1])
    w, _ = importance_weights(lp_g, lp_t, mask, mode="seq_tis", cap=2.0)
    close(w, [[1.32, 1.32, 0.0], [0.6, 0.6, 0.6]])
    w, _ = importance_weights(*ratios([3.0, 3.0]), mode="seq_tis", cap=2.0)
    close(w, [[2.0, 2.0]])


def test_seq_mask_drops_sequences_whose_product_ratio_leaves_the_band():
    lp_g, lp_t, mask = ratios([1.2, 1.1], [1.5, 1.5], [0.6, 0.6])
    w, met = importance_weights(lp_g, lp_t, mask, mode="seq_mask", lo=0.5, hi=2.0)
    close(w, [[1.32, 1.32], [0.0, 0.0], [0.0, 0.0]])
    assert met["is/seq_masked_frac"] == pytest.approx(2 / 3) and met["is/veto_seq_frac"] == 0.0


def test_geo_mask_is_length_normalised_where_seq_mask_is_not():
    # 40 tokens each 5% over: the product ratio is 7.0 (seq_mask drops it), the geometric mean 1.05.
    lp_g, lp_t, mask = ratios([1.05] * 40, [3.0, 3.0])
    w_seq, _ = importance_weights(lp_g, lp_t, mask, mode="seq_mask")
    w_geo, met = importance_weights(lp_g, lp_t, mask, mode="geo_mask", cap=2.0)
    assert (w_seq[0] == 0).all()
    close(w_geo[0], [1.05] * 40)
    assert (w_geo[1] == 0).all() and met["is/seq_masked_frac"] == 0.5     # geo mean 3.0 > hi


def test_sequence_and_geometric_log_ratios_are_clamped_to_20_before_exp():
    lp_g, lp_t, mask = ratios([math.exp(30.0), math.exp(30.0)], [math.exp(-40.0)])
    w, met = importance_weights(lp_g, lp_t, mask, mode="seq_mask", lo=0.0, hi=1e30)
    close(w[0], [math.exp(20.0)] * 2)
    assert w[1, 0].item() == pytest.approx(math.exp(-20.0), rel=1e-6)
    assert met["is/raw_max"] == pytest.approx(math.exp(20.0)) and met["is/raw_min"] == pytest.approx(math.exp(-20.0))
    # geo_mask: a geometric mean of e^±30 is clamped to e^±20, inside a band of [e^−25, e^25].
    lp_g, lp_t, mask = ratios([math.exp(30.0)], [math.exp(-30.0)])
    w, _ = importance_weights(lp_g, lp_t, mask, mode="geo_mask", cap=1e30, lo=math.exp(-25.0), hi=math.exp(25.0))
    close(w, [[math.exp(20.0)], [math.exp(-20.0)]])


def test_veto_drops_the_whole_sequence_holding_a_near_impossible_token():
    lp_g, lp_t, mask = ratios([1.0, 1.0, 1e-5], [0.9, 1.1, None], [2e-4, 1.0, 1.0])
    w, met = importance_weights(lp_g, lp_t, mask, mode="tis", veto=1e-4)
    close(w, [[0.0, 0.0, 0.0], [0.9, 1.1, 0.0], [2e-4, 1.0, 1.0]])
    assert met["is/veto_seq_frac"] == pytest.approx(1 / 3) and met["is/seq_masked_frac"] == pytest.approx(1 / 3)
    assert met["is/token_masked_frac"] == pytest.approx(3 / 8)


def test_veto_below_the_ratio_clamp_still_fires_on_the_unclamped_ratio():
    lp_g, lp_t, mask = ratios([1.0, math.exp(-30.0)], [1.0, math.exp(-19.0)])
    w, met = importance_weights(lp_g, lp_t, mask, mode="none", veto=math.exp(-25.0))
    assert (w[0] == 0).all() and (w[1] == 1).all() and met["is/veto_seq_frac"] == 0.5


def test_batch_normalize_makes_the_mean_weight_one_per_token_or_per_sequence():
    lp_g, lp_t, mask = make(scale=0.8, seed=11)
    for mode in MODES:
        w, met = importance_weights(lp_g, lp_t, mask, mode=mode, batch_normalize=True)
        if mode in SEQ:  # verl: each non-empty sequence's weight counted once
            has = mask.any(1)
            assert float(w[has, 0].double().mean()) == pytest.approx(1.0, rel=1e-6), mode
        else:
            assert float(w[mask].double().mean()) == pytest.approx(1.0, rel=1e-6), mode
            assert met["is/weight_mean"] == pytest.approx(1.0, rel=1e-12), mode


def test_verls_ess_sees_untruncated_ratios_clamped_to_one_over_c_and_c():
    """peer_spec's example: ρ = [1, 1, 0.3], C = 2, tis: ours 0.8437, verl 0.9259 (0.3 raised to 0.5)."""
    lp_g, lp_t, mask = ratios([1.0, 1.0, 0.3])
    met = importance_weights(lp_g, lp_t, mask, mode="tis", cap=2.0)[1]
    wc = np.array([1.0, 1.0, 0.5])
    assert met["is/rollout_is_eff_sample_size"] == pytest.approx(1 / np.mean((wc / (wc.mean() + 1e-8)) ** 2), rel=1e-9)
    assert (round(met["is/ess"], 4), round(met["is/rollout_is_eff_sample_size"], 4)) == (0.8437, 0.9259)


def test_batch_normalize_leaves_all_zero_weights_at_zero():
    lp_g, lp_t, mask = ratios([5.0, 6.0], [0.01, 1.0])
    w, met = importance_weights(lp_g, lp_t, mask, mode="icepop", lo=0.5, hi=2.0, veto=0.1, batch_normalize=True)
    assert (w == 0).all() and met["is/ess"] == 0.0 and met["is/seq_masked_frac"] == 1.0


def test_ess_is_one_for_uniform_weights_and_one_over_n_for_a_single_carrier():
    lp_g, lp_t, mask = ratios([1.5, 1.5, 1.5, 1.5])
    assert importance_weights(lp_g, lp_t, mask, mode="icepop")[1]["is/ess"] == pytest.approx(1.0)
    lp_g, lp_t, mask = ratios([1.5, 0.1, 0.1, 0.1])
    assert importance_weights(lp_g, lp_t, mask, mode="icepop")[1]["is/ess"] == pytest.approx(0.25)


# ---- invariants -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("mode", MODES)
def test_identical_policies_give_unit_weights_and_full_ess(mode, dtype):
    lp_g, _, mask = make(dtype=dtype)
    w, met = importance_weights(lp_g, lp_g.clone(), mask, mode=mode)
    assert (w[mask] == 1).all() and (w[~mask] == 0).all()
    assert met["is/ess"] == 1.0 and met["is/token_masked_frac"] == 0.0 and met["is/raw_std"] == 0.0
    assert met["is/frac_high"] == 0.0 and met["is/frac_low"] == 0.0


def test_none_gives_one_on_valid_tokens_whatever_the_mismatch():
    lp_g, lp_t, mask = make(scale=3.0, extreme=True)
    w, met = importance_weights(lp_g, lp_t, mask, mode="none")
    assert (w[mask] == 1).all() and (w[~mask] == 0).all() and met["is/ess"] == 1.0
    assert met["is/raw_max"] > 1e8                      # the raw ratios are still reported


def test_padding_values_outside_the_mask_are_ignored():
    lp_g, lp_t, mask = make(scale=0.8)
    for mode in MODES:
        a = importance_weights(lp_g, lp_t, mask, mode=mode, veto=0.2)
        b = importance_weights(lp_g.masked_fill(~mask, float("nan")), lp_t.masked_fill(~mask, float("-inf")), mask,
                               mode=mode, veto=0.2)
        assert torch.equal(a[0], b[0]) and a[1] == b[1], mode


def test_weights_are_detached_even_when_inputs_require_grad():
    lp_g, lp_t, mask = make()
    w, _ = importance_weights(lp_g, lp_t.requires_grad_(), mask, mode="tis")
    assert not w.requires_grad and w.grad_fn is None


def test_empty_mask_gives_zero_weights_and_nan_metrics():
    lp_g, lp_t, mask = make()
    for mode in MODES:
        w, met = importance_weights(lp_g, lp_t, torch.zeros_like(mask), mode=mode, veto=0.1, batch_normalize=True)
        assert (w == 0).all() and list(met) == [f"is/{k}" for k in IS_KEYS]
        assert all(math.isnan(v) for v in met.values()), mode


# ---- bad input ------------------------------------------------------------------------------------

def test_unknown_mode_raises_value_error_naming_it_and_the_valid_choices():
    lp_g, lp_t, mask = make()
    with pytest.raises(ValueError, match="'magic'.*valid: none, tis, icepop, seq_tis, seq_mask, geo_mask"):
        importance_weights(lp_g, lp_t, mask, mode="magic")


BAD_OPTIONS = [
    ("zero_cap", dict(mode="tis", cap=0.0), "cap=0.0"),
    ("inverted_band", dict(mode="icepop", lo=2.0, hi=0.5), "lo=2.0, hi=0.5"),
    ("negative_veto", dict(mode="tis", veto=-1.0), "veto=-1.0"),
    ("lower_cap_above_cap", dict(mode="tis", cap=2.0, lower_cap=3.0), "lower_cap=3.0"),
    ("lower_cap_on_a_non_tis_mode", dict(mode="icepop", lower_cap=0.5), "only to mode 'tis'"),
    ("infinite_cap_is_no_truncation", dict(mode="tis", cap=math.inf), "cap=inf truncates nothing"),
    ("nan_lo", dict(mode="icepop", lo=math.nan), "lo=nan is not a number"),
    ("infinite_hi", dict(mode="icepop", hi=math.inf), "hi=inf leaves the band open"),
    ("infinite_veto_drops_everything", dict(mode="none", veto=math.inf), "veto=inf drops every sequence"),
    ("negative_infinite_lo", dict(mode="seq_mask", lo=-math.inf), "lo=-inf is not a finite number"),
]


@pytest.mark.parametrize("kw,message", [c[1:] for c in BAD_OPTIONS], ids=[c[0] for c in BAD_OPTIONS])
def test_bad_options_raise_value_error_naming_the_value(kw, message):
    lp_g, lp_t, mask = make()
    with pytest.raises(ValueError, match=message):
        importance_weights(lp_g, lp_t, mask, **kw)


def test_mismatched_shapes_raise_value_error():
    lp_g, lp_t, mask = make()
    with pytest.raises(ValueError, match="one \\[B, T\\] shape"):
        importance_weights(lp_g, lp_t, mask[:, :3])
