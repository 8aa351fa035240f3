"""Every IS variant and option against a direct loop of its DESIGN.md §6 formula."""
import math

import pytest
import torch

from bench.rl.importance import IS_MODES, importance_weights

CAP, LO, HI = 2.0, 0.5, 2.0


def direct_weights(lp_g, lp_t, mask, mode, veto=None, batch_normalize=False, lower_cap=None):
    cl = lambda r: max(-20.0, min(20.0, r))
    B, T = mask.shape
    w = [[0.0] * T for _ in range(B)]
    for i in range(B):
        idx = [j for j in range(T) if mask[i, j]]
        r = {j: float(lp_t[i, j].double() - lp_g[i, j].double()) for j in idx}
        rho = {j: math.exp(cl(r[j])) for j in idx}
        s = math.exp(cl(sum(r.values()))) if idx else 1.0
        geo = math.exp(cl(sum(r.values()) / len(idx))) if idx else 1.0
        for j in idx:
            if mode == "none":
                w[i][j] = 1.0
            elif mode == "tis":
                w[i][j] = min(rho[j], CAP) if lower_cap is None else max(min(rho[j], CAP), lower_cap)
            elif mode == "icepop":
                w[i][j] = rho[j] if LO <= rho[j] <= HI else 0.0
            elif mode == "seq_tis":
                w[i][j] = min(s, CAP)
            elif mode == "seq_mask":
                w[i][j] = s if LO <= s <= HI else 0.0
            elif mode == "geo_mask":
                w[i][j] = min(rho[j], CAP) if LO <= geo <= HI else 0.0
        if veto is not None and any(rho[j] < veto for j in idx):
            for j in idx:
                w[i][j] = 0.0
    if batch_normalize:
        vals = [w[i][j] for i in range(B) for j in range(T) if mask[i, j]]
        mean = sum(vals) / len(vals)
        if mean > 0:
            w = [[x / mean for x in row] for row in w]
    return torch.tensor(w, dtype=torch.float64)


def make(scale=0.6, seed=0, B=8, T=7):
    g = torch.Generator().manual_seed(seed)
    lp_g = -torch.rand(B, T, generator=g) * 3
    lp_t = lp_g + scale * torch.randn(B, T, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0], lengths[1] = 1, 0
    return lp_g, lp_t, torch.arange(T)[None] < lengths[:, None]


CASES = [(mode, opt) for mode in IS_MODES for opt in ("plain", "veto", "batch_normalize", "extreme")]


@pytest.mark.parametrize("mode,opt", CASES, ids=[f"{m}-{o}" for m, o in CASES])
def test_weights_match_the_direct_formula(mode, opt):
    lp_g, lp_t, mask = make(scale=12.0 if opt == "extreme" else 0.6)
    kw = {"veto": 0.3} if opt == "veto" else {"batch_normalize": True} if opt == "batch_normalize" else {}
    w, _ = importance_weights(lp_g, lp_t, mask, mode=mode, cap=CAP, lo=LO, hi=HI, **kw)
    ref = direct_weights(lp_g, lp_t, mask, mode, **kw)
    assert w.dtype == torch.float32 and not w.requires_grad
    torch.testing.assert_close(w.double(), ref, rtol=1e-6, atol=1e-7)
    assert (w[~mask] == 0).all()


def test_tis_lower_cap_clamps_from_below():
    lp_g, lp_t, mask = make(scale=2.0)
    w, _ = importance_weights(lp_g, lp_t, mask, mode="tis", cap=CAP, lower_cap=0.8)
    torch.testing.assert_close(w.double(), direct_weights(lp_g, lp_t, mask, "tis", lower_cap=0.8), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", list(IS_MODES))
def test_is_metrics_match_their_definitions(mode):
    lp_g, lp_t, mask = make(scale=1.0, seed=3)
    w, met = importance_weights(lp_g, lp_t, mask, mode=mode, cap=CAP, lo=LO, hi=HI, veto=0.2)
    rho = torch.exp((lp_t - lp_g).double().clamp(-20, 20))[mask]
    wv = w.double()[mask]
    assert met["is/raw_mean"] == pytest.approx(float(rho.mean()))
    assert met["is/raw_max"] == pytest.approx(float(rho.max()))
    assert met["is/weight_mean"] == pytest.approx(float(wv.mean()), rel=1e-6)
    assert met["is/weight_min"] == pytest.approx(float(wv.min()), abs=1e-7)
    mean = wv.mean()
    ess = float(1 / ((wv / mean) ** 2).mean()) if mean > 0 else 0.0
    assert met["is/ess"] == pytest.approx(ess, rel=1e-5)
    high = HI if mode in ("icepop", "seq_mask", "geo_mask") else CAP
    assert met["is/frac_high"] == pytest.approx(float((rho > high).double().mean()))
    assert met["is/frac_low"] == pytest.approx(float((rho < LO).double().mean()))
    assert met["is/token_masked_frac"] == pytest.approx(float((wv == 0).double().mean()))
    valid_seq = mask.any(1)
    vetoed = ((torch.exp((lp_t - lp_g).clamp(-20, 20)) < 0.2) & mask).any(1) & valid_seq
    assert met["is/veto_seq_frac"] == pytest.approx(float(vetoed.sum() / valid_seq.sum()))
    zero_seq = valid_seq & ~((w != 0) & mask).any(1)
    assert met["is/seq_masked_frac"] == pytest.approx(float(zero_seq.sum() / valid_seq.sum()))


@pytest.mark.parametrize("mode", ["none", "tis", "icepop", "seq_tis", "seq_mask", "geo_mask"])
def test_identical_policies_give_unit_weights_and_full_ess(mode):
    lp_g, _, mask = make()
    w, met = importance_weights(lp_g, lp_g.clone(), mask, mode=mode)
    assert (w[mask] == 1).all() and met["is/ess"] == 1.0 and met["is/token_masked_frac"] == 0.0


def test_unknown_mode_names_the_valid_choices():
    lp_g, lp_t, mask = make()
    with pytest.raises(ValueError, match="valid: none, tis, icepop, seq_tis, seq_mask, geo_mask"):
        importance_weights(lp_g, lp_t, mask, mode="magic")
