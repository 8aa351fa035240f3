"""Every mismatch/* metric against a direct per-token / per-sequence loop of its DESIGN.md formula."""
import math

import numpy as np
import pytest
import torch

from bench.rl.mismatch import KEYS, mismatch_metrics


def direct(lp_g, lp_t, mask):
    """Plain python loops over valid tokens, float64, as written in DESIGN.md §6."""
    lg, lt, m = lp_g.double().tolist(), lp_t.double().tolist(), mask.tolist()
    cl = lambda r: max(-20.0, min(20.0, r))
    toks, seqs = [], []
    for i in range(len(m)):
        seq = [(lg[i][j], lt[i][j]) for j in range(len(m[i])) if m[i][j]]
        toks += seq
        if seq:
            seqs.append(seq)
    rs = [t - g for g, t in toks]
    mean = lambda xs: sum(xs) / len(xs)
    pt, pg = [math.exp(t) for _, t in toks], [math.exp(g) for g, _ in toks]
    js = []
    for g, t in toks:
        lm = math.log(0.5 * math.exp(t) + 0.5 * math.exp(g))
        a, b = cl(lm - t), cl(lm - g)
        js.append(0.5 * (math.exp(a) - a - 1) + 0.5 * (math.exp(b) - b - 1))
    d = [mean([g for g, _ in s]) - mean([t for _, t in s]) for s in seqs]
    seq_err = [mean([math.exp(abs(cl(t - g))) for g, t in s]) for s in seqs]
    return {
        "token_mult_prob_error": mean([math.exp(abs(cl(r))) for r in rs]),
        "gen_kl_k3": mean([math.exp(cl(r)) - cl(r) - 1 for r in rs]),
        "policy_kl_k3": mean([math.exp(-cl(r)) + cl(r) - 1 for r in rs]),
        "kl_k1": mean([g - t for g, t in toks]),
        "js": mean(js),
        "logp_abs_diff_mean": mean([abs(r) for r in rs]),
        "logp_abs_diff_max": max(abs(r) for r in rs),
        "prob_abs_diff_mean": mean([abs(a - b) for a, b in zip(pt, pg)]),
        "prob_abs_diff_max": max(abs(a - b) for a, b in zip(pt, pg)),
        "prob_pearson": float(np.corrcoef(pt, pg)[0, 1]),
        "chi2_token": mean([math.exp(2 * cl(r)) for r in rs]) - 1,
        "chi2_seq": mean([math.exp(2 * cl(sum(t - g for g, t in s))) for s in seqs]) - 1,
        "log_ppl_diff": mean(d),
        "log_ppl_abs_diff": mean([abs(x) for x in d]),
        "ppl_ratio": mean([math.exp(x) for x in d]),
        "seq_mult_prob_error_mean": mean(seq_err),
        "seq_mult_prob_error_max": max(seq_err),
    }


def make(B=6, T=9, scale=0.3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    lp_g = -torch.rand(B, T, generator=g) * 4
    lp_t = lp_g + scale * torch.randn(B, T, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0], lengths[1] = 1, 0  # a single-token sequence and an empty one
    mask = torch.arange(T)[None] < lengths[:, None]
    return lp_g.to(dtype), lp_t.clamp(max=0).to(dtype), mask


CASES = [("small_drift", dict(scale=0.05)), ("large_drift", dict(scale=1.0)), ("extreme_ratios", dict(scale=15.0)),
         ("bf16_inputs", dict(scale=0.2, dtype=torch.bfloat16)), ("other_seed", dict(scale=0.3, seed=5))]


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_every_metric_matches_its_direct_formula(name, kw):
    lp_g, lp_t, mask = make(**kw)
    got = mismatch_metrics(lp_g, lp_t, mask)
    ref = direct(lp_g, lp_t, mask)
    assert set(got) == {f"mismatch/{k}" for k in KEYS}
    for k in KEYS:
        assert got[f"mismatch/{k}"] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k


def test_identical_logprobs_give_the_zero_point_exactly():
    lp_g, _, mask = make()
    m = mismatch_metrics(lp_g, lp_g.clone(), mask)
    assert m["mismatch/token_mult_prob_error"] == 1.0 and m["mismatch/ppl_ratio"] == 1.0
    for k in ("gen_kl_k3", "policy_kl_k3", "kl_k1", "js", "chi2_token", "chi2_seq", "logp_abs_diff_max"):
        assert m[f"mismatch/{k}"] == 0.0
    assert m["mismatch/prob_pearson"] == 1.0


def test_padding_values_outside_the_mask_are_ignored():
    lp_g, lp_t, mask = make()
    a = mismatch_metrics(lp_g, lp_t, mask)
    lp_t2 = lp_t.masked_fill(~mask, float("-inf"))
    assert mismatch_metrics(lp_g.masked_fill(~mask, float("nan")), lp_t2, mask) == a


def test_empty_mask_gives_nan_not_an_exception():
    lp_g, lp_t, _ = make()
    out = mismatch_metrics(lp_g, lp_t, torch.zeros_like(lp_g, dtype=torch.bool))
    assert all(math.isnan(v) for v in out.values())
