"""Every mismatch/* metric against a direct per-sequence / per-token loop of its DESIGN.md §6 formula.

The reference is written independently of the library: numpy float64 scalars, the formulas
exactly as §6 writes them (e^x − x − 1, log(½e^a + ½e^b), np.corrcoef), log-ratios clamped to ±20
where they are exponentiated. js_divergence_error is NeMo-RL's formula (loss_functions.py
ClippedPGLossFn: lm = log(½e^lp_t + ½e^lp_g), ½k3(lp_t − lm) + ½k3(lp_g − lm), no clamp);
chi2_seq, log_ppl_diff, log_ppl_abs_diff and ppl_ratio are verl's (rollout_corr_helper.py
compute_offpolicy_metrics: per-row masked means with verl's masked_mean Σ(v·m)/(Σm + 1e-8), then a
mean over all B rows, empty ones included); seq_mult_prob_error over sequences with >= 1 valid token."""
import math

import numpy as np
import pytest
import torch

from bench.rl.mismatch import KEYS, mismatch_metrics, sequence_errors, worst_sequence

C = 20.0


def clamp(x):
    return float(np.clip(x, -C, C))


def valid_sequences(lp_g, lp_t, mask):
    """[(lg array, lt array)] for each sequence with at least one valid token, in float64."""
    lg, lt, m = lp_g.double().numpy(), lp_t.double().numpy(), mask.numpy()
    return [(lg[i][m[i]], lt[i][m[i]]) for i in range(len(m)) if m[i].any()]


def nemo_js(g: float, t: float) -> float:
    """NeMo-RL js_divergence_error of one token, float64, no clamp."""
    lm = np.logaddexp(t, g) - np.log(2.0)
    k3 = lambda x: np.exp(x) - x - 1
    return 0.5 * k3(t - lm) + 0.5 * k3(g - lm)


def verl_rows(lp_g, lp_t, mask):
    """Per row of all B: (mean_t lp_g − mean_t lp_t, Σ_t (lp_t − lp_g)), with verl's masked_mean."""
    lg, lt, m = lp_g.double().numpy(), lp_t.double().numpy(), mask.numpy().astype(np.float64)
    mm = lambda v: (np.where(m > 0, v, 0.0) * m).sum(1) / (m.sum(1) + 1e-8)
    return mm(lg) - mm(lt), (np.where(m > 0, lt - lg, 0.0) * m).sum(1)


VERL = ("chi2_seq", "log_ppl_diff", "log_ppl_abs_diff", "ppl_ratio")  # verl's masked_mean +1e-8: rel ~1e-8


def direct(lp_g, lp_t, mask):
    seqs = valid_sequences(lp_g, lp_t, mask)
    tok = [(g, t) for lg, lt in seqs for g, t in zip(lg, lt)]
    r = np.array([t - g for g, t in tok])
    rc = np.array([clamp(x) for x in r])
    pt, pg = np.array([np.exp(t) for _, t in tok]), np.array([np.exp(g) for g, _ in tok])
    js = [nemo_js(g, t) for g, t in tok]
    d, seq_sum = verl_rows(lp_g, lp_t, mask)
    seq_err = np.array([np.mean([np.exp(abs(clamp(t - g))) for g, t in zip(lg, lt)]) for lg, lt in seqs])
    return {
        "token_mult_prob_error": np.mean(np.exp(np.abs(rc))),
        "gen_kl_k3": np.mean(np.exp(rc) - rc - 1),
        "policy_kl_k3": np.mean(np.exp(-rc) + rc - 1),
        "kl_k1": np.mean([g - t for g, t in tok]),
        "js_divergence_error": np.mean(js),
        "logp_abs_diff_mean": np.mean(np.abs(r)),
        "logp_abs_diff_max": np.max(np.abs(r)),
        "prob_abs_diff_mean": np.mean(np.abs(pt - pg)),
        "prob_abs_diff_max": np.max(np.abs(pt - pg)),
        "prob_pearson": np.corrcoef(pt, pg)[0, 1],
        "chi2_token": np.mean(np.exp(rc) ** 2) - 1,
        "chi2_seq": np.mean(np.exp(2 * np.clip(seq_sum, -C, C)) - 1),
        "log_ppl_diff": np.mean(d),
        "log_ppl_abs_diff": np.mean(np.abs(d)),
        "ppl_ratio": np.mean([np.exp(clamp(x)) for x in d]),
        "seq_mult_prob_error_mean": np.mean(seq_err),
        "seq_mult_prob_error_max": np.max(seq_err),
    }


def make(B=7, T=9, scale=0.3, seed=0, dtype=torch.float32, extreme=False):
    """Ragged masks: sequence 0 has one valid token, sequence 1 none. extreme: |r| up to 50."""
    g = torch.Generator().manual_seed(seed)
    lp_g = -torch.rand(B, T, generator=g, dtype=torch.float64) * 4
    lp_t = (lp_g + scale * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0)
    if extreme:
        lp_t[2, :3] = lp_g[2, :3] - torch.tensor([50.0, 30.0, 21.0])   # trainer says ~impossible
        lp_g[3, :2] = lp_t[3, :2] - torch.tensor([50.0, 25.0])          # generator says ~impossible
        lp_t[0, 0] = lp_g[0, 0] - 45.0                                  # one-token sequence: |mean r| > 20
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0], lengths[1] = 1, 0
    lengths[2:4] = T
    mask = torch.arange(T)[None] < lengths[:, None]
    return lp_g.to(dtype), lp_t.to(dtype), mask


CASES = [
    ("float32_small_drift", dict(scale=0.05)),
    ("float32_large_drift", dict(scale=1.0)),
    ("float32_extreme_ratios_hit_the_clamp", dict(scale=1.0, extreme=True)),
    ("bfloat16_inputs", dict(scale=0.2, dtype=torch.bfloat16)),
    ("bfloat16_extreme_ratios", dict(scale=0.5, dtype=torch.bfloat16, extreme=True)),
    ("float64_inputs", dict(scale=0.3, dtype=torch.float64, seed=3)),
    ("float16_inputs", dict(scale=0.3, dtype=torch.float16, seed=4)),
    ("long_batch", dict(B=32, T=40, scale=0.4, seed=7)),
]


@pytest.mark.parametrize("kw", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_every_metric_matches_its_direct_formula(kw):
    lp_g, lp_t, mask = make(**kw)
    got = mismatch_metrics(lp_g, lp_t, mask)
    ref = direct(lp_g, lp_t, mask)
    assert list(got) == [f"mismatch/{k}" for k in KEYS] and all(type(v) is float for v in got.values())
    for k in KEYS:
        rel = 1e-7 if k in VERL else 1e-9
        assert got[f"mismatch/{k}"] == pytest.approx(float(ref[k]), rel=rel, abs=1e-12), k


def test_extreme_ratios_stay_finite_because_log_ratios_are_clamped():
    lp_g, lp_t, mask = make(scale=1.0, extreme=True)
    got = mismatch_metrics(lp_g, lp_t, mask)
    assert all(math.isfinite(v) for v in got.values())
    assert got["mismatch/logp_abs_diff_max"] == pytest.approx(50.0, rel=1e-6)   # |r| is not clamped
    assert got["mismatch/chi2_token"] < math.exp(40)                               # ρ² ≤ e^40


@pytest.mark.parametrize("r", [-40.0, -25.0, 30.0, 500.0])
def test_js_divergence_error_is_nemo_rls_formula_unclamped(r):
    g, t = -1.0, -1.0 + r
    m = mismatch_metrics(torch.tensor([[g]]), torch.tensor([[t]]), torch.tensor([[True]]))
    assert m["mismatch/js_divergence_error"] == pytest.approx(nemo_js(g, t), rel=1e-12)


def test_js_divergence_error_on_one_adversarial_token_is_the_estimator_not_a_js_divergence():
    """One token with r = −15 among 2000 identical ones: NeMo-RL's estimator gives 0.0034, below
    ln 2; the old `js` (k3 of lm − lp instead of lp − lm) gave 408.6 on the same data."""
    lp_g = torch.full((1, 2000), -2.0, dtype=torch.float64)
    lp_t = lp_g.clone()
    lp_t[0, 0] -= 15.0
    got = mismatch_metrics(lp_g, lp_t, torch.ones(1, 2000, dtype=torch.bool))["mismatch/js_divergence_error"]
    assert got == pytest.approx(nemo_js(-2.0, -17.0) / 2000, rel=1e-12) and got < math.log(2)


def test_verls_sequence_means_count_empty_rows():
    """peer_spec's example: rows r = [0.5, −0.5], [2.0], [] give verl's chi2_seq 17.866,
    log_ppl_diff −0.667, ppl_ratio 0.7118 (the empty row counts), recomputed here."""
    lp_g = torch.full((3, 2), -1.0, dtype=torch.float64)
    lp_t = lp_g + torch.tensor([[0.5, -0.5], [2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False], [False, False]])
    got = mismatch_metrics(lp_g, lp_t, mask)
    d, seq_sum = verl_rows(lp_g, lp_t, mask)
    assert got["mismatch/chi2_seq"] == pytest.approx(np.mean(np.exp(2 * seq_sum) - 1), rel=1e-12)
    assert got["mismatch/log_ppl_diff"] == pytest.approx(np.mean(d), rel=1e-7)
    assert got["mismatch/ppl_ratio"] == pytest.approx(np.mean(np.exp(d)), rel=1e-7)
    assert (round(got["mismatch/chi2_seq"], 3), round(got["mismatch/log_ppl_diff"], 3)) == (17.866, -0.667)


def test_identical_logprobs_give_the_zero_point_exactly():
    lp_g, _, mask = make(B=12, T=11, seed=2)
    m = mismatch_metrics(lp_g, lp_g.clone(), mask)
    for k in ("token_mult_prob_error", "ppl_ratio", "seq_mult_prob_error_mean", "seq_mult_prob_error_max",
              "prob_pearson"):
        assert m[f"mismatch/{k}"] == 1.0, k
    for k in ("gen_kl_k3", "policy_kl_k3", "kl_k1", "js_divergence_error", "chi2_token", "chi2_seq", "logp_abs_diff_mean",
              "logp_abs_diff_max", "prob_abs_diff_mean", "prob_abs_diff_max", "log_ppl_diff", "log_ppl_abs_diff"):
        assert m[f"mismatch/{k}"] == 0.0, k


def test_k3_keeps_relative_precision_for_a_tiny_mismatch():
    # r = 1e-7 everywhere: k3 = e^r − r − 1 ≈ r²/2 = 5e-15, below float64's resolution of 1 + r.
    lp_g = torch.full((3, 4), -1.0, dtype=torch.float64)
    lp_t = lp_g + 1e-7
    r = float((lp_t - lp_g)[0, 0])
    m = mismatch_metrics(lp_g, lp_t, torch.ones(3, 4, dtype=torch.bool))
    assert m["mismatch/gen_kl_k3"] == pytest.approx(r * r / 2 + r ** 3 / 6, rel=1e-6, abs=0)
    assert m["mismatch/policy_kl_k3"] == pytest.approx(r * r / 2 - r ** 3 / 6, rel=1e-6, abs=0)
    assert m["mismatch/js_divergence_error"] == pytest.approx(r * r / 8, rel=1e-5, abs=0)  # each side ≈ (r/2)²/2
    assert m["mismatch/chi2_token"] == pytest.approx(math.expm1(2 * r), rel=1e-9, abs=0)


def test_kls_are_nonnegative_and_k1_has_the_sign_of_the_drift():
    lp_g, lp_t, mask = make(scale=0.8, seed=9)
    m = mismatch_metrics(lp_g, lp_t, mask)
    assert min(m["mismatch/gen_kl_k3"], m["mismatch/policy_kl_k3"], m["mismatch/js_divergence_error"]) > 0
    m2 = mismatch_metrics(lp_g, lp_g - 0.1, torch.ones_like(mask))   # trainer uniformly lower
    assert m2["mismatch/kl_k1"] == pytest.approx(0.1, rel=1e-5)


def test_padding_values_outside_the_mask_are_ignored():
    lp_g, lp_t, mask = make()
    a = mismatch_metrics(lp_g, lp_t, mask)
    b = mismatch_metrics(lp_g.masked_fill(~mask, float("nan")), lp_t.masked_fill(~mask, float("-inf")), mask)
    assert a == b


def test_empty_sequences_count_only_in_verls_sequence_means():
    """Rows with no valid token (garbage log-probs) change nothing but verl's four all-B means,
    which they dilute as empty rows (value 0, 0, 1, 0) exactly as verl's do."""
    lp_g, lp_t, mask = make(B=5, T=6, seed=1)
    a = mismatch_metrics(lp_g, lp_t, mask)
    pad = torch.full((2, 6), 5.0)                       # garbage in rows with no valid token
    empty = torch.zeros(2, 6, dtype=torch.bool)
    b = mismatch_metrics(torch.cat([lp_g, pad]), torch.cat([lp_t, -pad]), torch.cat([mask, empty]))
    empty_value = {"chi2_seq": 0.0, "log_ppl_diff": 0.0, "log_ppl_abs_diff": 0.0, "ppl_ratio": 1.0}
    for k in KEYS:
        want = a[f"mismatch/{k}"]
        if k in empty_value:
            want = (want * 5 + 2 * empty_value[k]) / 7
        assert b[f"mismatch/{k}"] == pytest.approx(want, rel=1e-12, abs=1e-15), k


def test_empty_mask_gives_nan_not_an_exception():
    lp_g, lp_t, _ = make()
    out = mismatch_metrics(lp_g, lp_t, torch.zeros_like(lp_g, dtype=torch.bool))
    assert list(out) == [f"mismatch/{k}" for k in KEYS] and all(math.isnan(v) for v in out.values())


def test_mismatched_shapes_raise_value_error_naming_them():
    lp_g, lp_t, mask = make()
    with pytest.raises(ValueError, match=r"\(7, 9\), \(7, 8\), \(7, 9\)"):
        mismatch_metrics(lp_g, lp_t[:, :8], mask)


def test_mask_of_any_truthy_dtype_is_accepted():
    lp_g, lp_t, mask = make()
    assert mismatch_metrics(lp_g, lp_t, mask.to(torch.uint8)) == mismatch_metrics(lp_g, lp_t, mask)


def test_inputs_that_require_grad_are_not_traced():
    lp_g, lp_t, mask = make()
    assert mismatch_metrics(lp_g, lp_t.requires_grad_(), mask) == mismatch_metrics(lp_g, lp_t.detach(), mask)


# ---- prob_pearson guards -------------------------------------------------------------------------

PEARSON_CASES = [
    # name, p_gen row, p_train row, expected (nan = undefined)
    ("identical_and_constant_is_one", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], 1.0),
    ("identical_single_token_is_one", [0.3], [0.3], 1.0),
    ("differing_single_token_is_nan", [0.3], [0.4], math.nan),
    ("one_constant_side_is_nan", [0.5, 0.5, 0.5], [0.2, 0.4, 0.6], math.nan),
    ("both_constant_but_different_is_nan", [0.5, 0.5, 0.5], [0.4, 0.4, 0.4], math.nan),
    ("scaled_copy_is_one", [0.1, 0.2, 0.4], [0.05, 0.1, 0.2], 1.0),
    ("reversed_is_minus_one", [0.1, 0.2, 0.3], [0.3, 0.2, 0.1], -1.0),
]


@pytest.mark.parametrize("pg,pt,expected", [c[1:] for c in PEARSON_CASES], ids=[c[0] for c in PEARSON_CASES])
def test_prob_pearson_guards_zero_variance(pg, pt, expected):
    lp_g, lp_t = torch.tensor([pg]).double().log(), torch.tensor([pt]).double().log()
    got = mismatch_metrics(lp_g, lp_t, torch.ones_like(lp_g, dtype=torch.bool))["mismatch/prob_pearson"]
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-12) and -1.0 <= got <= 1.0


# ---- worst sequence ------------------------------------------------------------------------------

def direct_seq_err(lp_g, lp_t, mask):
    lg, lt, m = lp_g.double().numpy(), lp_t.double().numpy(), mask.numpy()
    return [np.mean([np.exp(abs(clamp(lt[i, j] - lg[i, j]))) for j in range(m.shape[1]) if m[i, j]])
            if m[i].any() else math.nan for i in range(len(m))]


@pytest.mark.parametrize("kw", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_sequence_errors_match_the_direct_per_sequence_mean(kw):
    lp_g, lp_t, mask = make(**kw)
    e = sequence_errors(lp_g, lp_t, mask)
    ref = direct_seq_err(lp_g, lp_t, mask)
    np.testing.assert_allclose(e["seq_err"].numpy(), ref, rtol=1e-12)   # NaN where empty, on both sides
    assert e["n_tokens"].tolist() == mask.sum(1).tolist()
    assert (e["r"][~mask] == 0).all() and (e["token_err"][~mask] == 0).all()
    valid = [x for x in ref if not math.isnan(x)]
    m = mismatch_metrics(lp_g, lp_t, mask)
    assert m["mismatch/seq_mult_prob_error_max"] == pytest.approx(max(valid), rel=1e-12)
    assert worst_sequence(lp_g, lp_t, mask) == int(np.nanargmax(ref))


def test_worst_sequence_ignores_padding_and_empty_rows():
    lp_g, lp_t, mask = make(seed=5)
    i = worst_sequence(lp_g, lp_t, mask)
    lp_g2 = lp_g.masked_fill(~mask, float("nan"))
    lp_t2 = lp_t.masked_fill(~mask, 100.0)              # huge fake |r| on padding, incl. the empty row
    assert worst_sequence(lp_g2, lp_t2, mask) == i


def test_worst_sequence_finds_a_planted_outlier():
    lp_g, lp_t, mask = make(B=10, T=8, scale=0.05, seed=6)
    lp_t[6, 0] = lp_g[6, 0] - 3.0
    mask[6] = True
    assert worst_sequence(lp_g, lp_t, mask) == 6


def test_worst_sequence_on_an_empty_mask_raises_value_error():
    lp_g, lp_t, mask = make()
    with pytest.raises(ValueError, match="no valid token"):
        worst_sequence(lp_g, lp_t, torch.zeros_like(mask))
