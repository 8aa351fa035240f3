"""Trainer vs generator disagreement on the tokens the generator sampled (DESIGN.md §6).

lp_g: the log-prob the generator reported for each sampled token (its own engine, precision,
KV cache); lp_t: the log-prob the trainer recomputes for the same token. r = lp_t − lp_g and
ρ = exp(r) = p_t / p_g is the per-token importance ratio. With identical numerics r ≡ 0.

Why several metrics: token_mult_prob_error (mean exp|r|) is the headline (1.0 = identical) and
is symmetric; the k3 estimators are unbiased, non-negative KL estimates from samples of p_g
(gen_kl_k3 ≈ KL(p_g‖p_t)) or as if from p_t (policy_kl_k3); chi² ties directly to the variance of
IS weights (chi2 = E[ρ²] − 1 = Var(ρ) when E[ρ] = 1) and so to how much IS correction costs;
sequence-level quantities show how per-token drift compounds over a response.

All math runs in float64 on the valid tokens only; r is clamped to ±20 wherever it is
exponentiated (exp(20) ≈ 5e8 keeps ratios finite while leaving any realistic mismatch intact).
Empty masks give NaN for every metric (there is nothing to measure), never an exception.
"""
from __future__ import annotations

import torch

CLAMP = 20.0
KEYS = ("token_mult_prob_error", "gen_kl_k3", "policy_kl_k3", "kl_k1", "js", "logp_abs_diff_mean",
        "logp_abs_diff_max", "prob_abs_diff_mean", "prob_abs_diff_max", "prob_pearson", "chi2_token",
        "chi2_seq", "log_ppl_diff", "log_ppl_abs_diff", "ppl_ratio", "seq_mult_prob_error_mean",
        "seq_mult_prob_error_max")


def _mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (x * m).sum() / m.sum()


def mismatch_metrics(lp_gen: torch.Tensor, lp_train: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Every `mismatch/*` metric of DESIGN.md §6 as python floats. Inputs [B, T]; mask bool."""
    m = mask.bool()
    if not m.any():
        return {f"mismatch/{k}": float("nan") for k in KEYS}
    lg, lt = lp_gen.detach().double(), lp_train.detach().double()
    lg, lt = torch.where(m, lg, 0.0), torch.where(m, lt, 0.0)  # padding may hold -inf/NaN
    mf = m.double()
    r = lt - lg
    rc = r.clamp(-CLAMP, CLAMP)
    out = {
        "token_mult_prob_error": _mean(torch.exp(rc.abs()), mf),
        "gen_kl_k3": _mean(torch.exp(rc) - rc - 1, mf),
        "policy_kl_k3": _mean(torch.exp(-rc) + rc - 1, mf),
        "kl_k1": _mean(lg - lt, mf),
        "logp_abs_diff_mean": _mean(r.abs(), mf),
        "logp_abs_diff_max": r.abs()[m].max(),
        "chi2_token": _mean(torch.exp(2 * rc), mf) - 1,
    }
    # Jensen-Shannon (k3 form) against the mixture lm = log(½p_t + ½p_g), per token.
    lm = torch.logaddexp(lt, lg) - torch.log(torch.tensor(2.0, dtype=torch.float64))
    dt, dg = (lm - lt).clamp(-CLAMP, CLAMP), (lm - lg).clamp(-CLAMP, CLAMP)
    out["js"] = 0.5 * _mean(torch.exp(dt) - dt - 1, mf) + 0.5 * _mean(torch.exp(dg) - dg - 1, mf)
    pt, pg = torch.exp(lt[m]), torch.exp(lg[m])
    out["prob_abs_diff_mean"] = (pt - pg).abs().mean()
    out["prob_abs_diff_max"] = (pt - pg).abs().max()
    out["prob_pearson"] = _pearson(pt, pg)
    # Per sequence (sequences with at least one valid token).
    n = mf.sum(1)
    has = n > 0
    n, mfs, rs, lgs, lts = n[has], mf[has], r[has], lg[has], lt[has]
    seq_sum = (rs * mfs).sum(1).clamp(-CLAMP, CLAMP)
    out["chi2_seq"] = torch.exp(2 * seq_sum).mean() - 1
    d = (lgs * mfs).sum(1) / n - (lts * mfs).sum(1) / n  # mean_t lp_g − mean_t lp_t
    out["log_ppl_diff"] = d.mean()
    out["log_ppl_abs_diff"] = d.abs().mean()
    out["ppl_ratio"] = torch.exp(d.clamp(-CLAMP, CLAMP)).mean()
    seq_err = (torch.exp(rs.clamp(-CLAMP, CLAMP).abs()) * mfs).sum(1) / n
    out["seq_mult_prob_error_mean"] = seq_err.mean()
    out["seq_mult_prob_error_max"] = seq_err.max()
    return {f"mismatch/{k}": float(out[k]) for k in KEYS}


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation; 1.0 when both sides are identical constants, NaN for one constant
    side (undefined), so identical inputs always read as perfect agreement."""
    if torch.equal(a, b):
        return torch.tensor(1.0, dtype=torch.float64)
    da, db = a - a.mean(), b - b.mean()
    den = torch.sqrt((da * da).sum() * (db * db).sum())
    return (da * db).sum() / den if den > 0 else torch.tensor(float("nan"), dtype=torch.float64)


def worst_sequence(lp_gen: torch.Tensor, lp_train: torch.Tensor, mask: torch.Tensor) -> int:
    """Index of the sequence with the largest mean exp(|r|) over its valid tokens."""
    m = mask.double()
    r = (lp_train.double() - lp_gen.double()).clamp(-CLAMP, CLAMP)
    per_seq = (torch.exp(r.abs()) * m).sum(1) / m.sum(1).clamp(min=1)
    return int(per_seq.argmax())
