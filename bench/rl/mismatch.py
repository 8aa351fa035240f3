"""Trainer vs generator disagreement on the tokens the generator sampled (DESIGN.md §6).

lp_g is the log-prob the generator reported for each sampled token (its own engine, precision,
KV cache); lp_t is the log-prob the trainer recomputes for the same token. r = lp_t − lp_g and
ρ = exp(r) = p_t / p_g is the per-token importance ratio. With identical numerics r ≡ 0 and every
metric sits exactly at its zero point (token_mult_prob_error = ppl_ratio = 1, the rest 0).

Why several metrics:
  token_mult_prob_error  mean exp(|r|): the headline. Symmetric, 1.0 = identical, and 1 + x reads
                         as "the two sides disagree by a factor of about 1 + x per token".
  k3 estimators          the tokens were sampled from p_g, so KL(p_g‖p_t) = E_g[−r] could be
                         estimated by mean(−r) (k1: kl_k1), but k1 is noisy and can go negative.
                         k3 = ρ − 1 − r = E_g[ρ] − 1 − E_g[r] adds the zero-mean control variate
                         ρ − 1 (E_g[ρ] = 1), giving an unbiased, always ≥ 0, low-variance estimate
                         (gen_kl_k3). policy_kl_k3 is the mirror form e^−r − 1 + r, as if the
                         samples came from p_t. js_divergence_error is NeMo-RL's metric of that
                         name (nemo_rl/algorithms/loss/loss_functions.py ClippedPGLossFn): the k3
                         form against the mixture lm = log(½p_t + ½p_g) of the sampled token,
                         ½k3(lp_t − lm) + ½k3(lp_g − lm). An estimator built from one token's two
                         probabilities, not the Jensen-Shannon divergence of the two
                         distributions: it grows like |r|/2 for a large |r| (the true JS is
                         <= ln 2 and needs the full vocabulary).
  chi²                   E[ρ²] − 1 = Var(ρ) when E[ρ] = 1: exactly how much variance an unclipped
                         importance-sampling correction would add, per token and per sequence.
  sequence quantities    how per-token drift compounds over a response (Σ_t r grows with length).

Numerics. Everything runs in float64 on the valid tokens only (padding may hold −inf or NaN and
is zeroed before use). Every log-ratio (r, Σ_t r, a mean difference of log-probs, lm − lp) is
clamped to ±CLAMP = ±20 before it is exponentiated: exp(20) ≈ 5e8 leaves any realistic
mismatch intact, while one broken token (|r| of 50 after an FP8 overflow) can no longer make a
batch mean inf. |r| itself and kl_k1 are reported unclamped — they are never exponentiated.
The k3 terms e^x − x − 1 are computed as expm1(x) − x: for a tiny mismatch (x ≈ 1e-7, k3 ≈ 5e-15)
the naive form cancels to rounding noise, expm1 keeps full relative precision, and x = 0 gives
exactly 0. All results are computed on device and read back with a single host sync.

Edge cases. An all-empty mask gives NaN for every metric (a mean over nothing; never an
exception). chi2_seq, log_ppl_diff, log_ppl_abs_diff and ppl_ratio are verl's
(verl/trainer/ppo/rollout_corr_helper.py compute_offpolicy_metrics): means over *all* B rows, an
empty row contributing its masked-mean value (0, 0, 1, 0: verl's masked_mean gives 0 over nothing).
seq_mult_prob_error_mean/_max are NeMo-RL's per-sequence mean exp(|r|) (nemo_rl/algorithms/grpo.py
compute_and_apply_seq_logprob_error_masking), over sequences with at least one valid token.
prob_pearson is 1.0 when the two probability vectors are identical (constant or not), and NaN
when they differ but either side has zero variance (correlation undefined, e.g. one valid token).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

CLAMP = 20.0
KEYS = ("token_mult_prob_error", "gen_kl_k3", "policy_kl_k3", "kl_k1", "js_divergence_error", "logp_abs_diff_mean",
        "logp_abs_diff_max", "prob_abs_diff_mean", "prob_abs_diff_max", "prob_pearson", "chi2_token",
        "chi2_seq", "log_ppl_diff", "log_ppl_abs_diff", "ppl_ratio", "seq_mult_prob_error_mean",
        "seq_mult_prob_error_max")


def prepare(lp_gen: Tensor, lp_train: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Check shapes; return detached float64 (lp_gen, lp_train) with padding set to 0, and the bool
    mask. Zeroed padding makes r = 0 there, so plain sums over a row are sums over valid tokens."""
    if lp_gen.dim() != 2 or lp_gen.shape != lp_train.shape or lp_gen.shape != mask.shape:
        raise ValueError(f"lp_gen, lp_train and mask must share one [B, T] shape; got "
                         f"{tuple(lp_gen.shape)}, {tuple(lp_train.shape)}, {tuple(mask.shape)}")
    m = mask.bool()
    lg = torch.where(m, lp_gen.detach().double(), 0.0)
    lt = torch.where(m, lp_train.detach().double(), 0.0)
    return lg, lt, m


def _k3(x: Tensor) -> Tensor:
    """e^x − x − 1 ≥ 0, without the cancellation of the naive form near x = 0."""
    return torch.expm1(x) - x


def _clamp(x: Tensor) -> Tensor:
    return x.clamp(-CLAMP, CLAMP)


def mismatch_metrics(lp_gen: Tensor, lp_train: Tensor, mask: Tensor) -> dict[str, float]:
    """Every `mismatch/*` metric of DESIGN.md §6 as python floats. lp_gen, lp_train: [B, T] float
    (any float dtype); mask: [B, T] bool, True on valid response tokens."""
    lg, lt, m = prepare(lp_gen, lp_train, mask)
    if not bool(m.any()):
        return {f"mismatch/{k}": math.nan for k in KEYS}
    mf = m.double()
    n_tok = mf.sum()

    def mean(x: Tensor) -> Tensor:          # over valid tokens
        return (x * mf).sum() / n_tok

    def vmax(x: Tensor) -> Tensor:
        return torch.where(m, x, -math.inf).max()

    r = lt - lg
    rc = _clamp(r)
    pt, pg = torch.exp(lt), torch.exp(lg)
    # NeMo-RL's js_divergence_error: lp − lm with lm = log(½e^lp_t + ½e^lp_g), written so that
    # r = 0 gives exactly 0: lp_t − lm = −log1p(½·expm1(−r)), lp_g − lm = −log1p(½·expm1(r)).
    # Both are <= ln 2, so e^(lp − lm) cannot overflow and nothing is clamped (NeMo-RL clamps
    # nothing); a large |r| makes one side ≈ −|r| + ln 2, whose k3 is ≈ |r|.
    d_t = -torch.log1p(0.5 * torch.expm1(-r))
    d_g = -torch.log1p(0.5 * torch.expm1(r))
    out = {
        "token_mult_prob_error": mean(torch.exp(rc.abs())),
        "gen_kl_k3": mean(_k3(rc)),
        "policy_kl_k3": mean(_k3(-rc)),
        "kl_k1": mean(lg - lt),
        "js_divergence_error": mean(0.5 * _k3(d_t) + 0.5 * _k3(d_g)),
        "logp_abs_diff_mean": mean(r.abs()),
        "logp_abs_diff_max": vmax(r.abs()),
        "prob_abs_diff_mean": mean((pt - pg).abs()),
        "prob_abs_diff_max": vmax((pt - pg).abs()),
        "prob_pearson": _pearson(pt, pg, m, mean),
        "chi2_token": mean(torch.expm1(2 * rc)),       # mean(ρ²) − 1, exact 0 at r = 0
    }
    # Per sequence. verl's four over all B rows (an empty row: d = 0, Σr = 0); NeMo-RL's
    # seq_mult_prob_error over the sequences holding at least one valid token.
    n = mf.sum(1)
    has = n > 0
    hf = has.double()

    def smean(x: Tensor) -> Tensor:
        return (torch.where(has, x, 0.0) * hf).sum() / hf.sum()

    seq_r = r.sum(1)                                   # Σ_t r (padding contributes 0)
    d = -seq_r / n.clamp(min=1)                        # mean_t lp_g − mean_t lp_t (0 for an empty row)
    seq_err = (torch.exp(rc.abs()) * mf).sum(1) / n.clamp(min=1)
    out.update({
        "chi2_seq": torch.expm1(2 * _clamp(seq_r)).mean(),
        "log_ppl_diff": d.mean(),
        "log_ppl_abs_diff": d.abs().mean(),
        "ppl_ratio": torch.exp(_clamp(d)).mean(),
        "seq_mult_prob_error_mean": smean(seq_err),
        "seq_mult_prob_error_max": torch.where(has, seq_err, -math.inf).max(),
    })
    values = torch.stack([out[k] for k in KEYS]).tolist()   # one host sync for all metrics
    return {f"mismatch/{k}": v for k, v in zip(KEYS, values)}


def _pearson(a: Tensor, b: Tensor, m: Tensor, mean) -> Tensor:
    """Pearson correlation of a and b over the valid tokens. 1.0 when they are identical (even if
    constant, where the formula is 0/0); NaN when they differ but one side has zero variance."""
    da, db = torch.where(m, a - mean(a), 0.0), torch.where(m, b - mean(b), 0.0)
    # sqrt of each variance separately: their product can underflow for near-constant vectors.
    den = (da * da).sum().sqrt() * (db * db).sum().sqrt()
    corr = ((da * db).sum() / den).clamp(-1.0, 1.0)    # rounding can overshoot ±1 by an ulp
    identical = ~((a != b) & m).any()
    nan = torch.full_like(corr, math.nan)
    return torch.where(identical, torch.ones_like(corr), torch.where(den > 0, corr, nan))


def sequence_errors(lp_gen: Tensor, lp_train: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Per-token and per-sequence tensors behind the worst-sequence plot (float64, input device):
      r          [B, T]  lp_t − lp_g, 0 outside the mask, unclamped (what the plot draws)
      token_err  [B, T]  exp(|r|) with r clamped to ±20, 0 outside the mask
      seq_err    [B]     mean of token_err over the sequence's valid tokens; NaN for none
      n_tokens   [B]     valid tokens per sequence
    seq_err's mean / max over non-empty sequences are mismatch/seq_mult_prob_error_mean / _max."""
    lg, lt, m = prepare(lp_gen, lp_train, mask)
    r = lt - lg
    token_err = torch.where(m, torch.exp(_clamp(r).abs()), 0.0)
    n = m.sum(1)
    seq_err = torch.where(n > 0, token_err.sum(1) / n.clamp(min=1), math.nan)
    return {"r": r, "token_err": token_err, "seq_err": seq_err, "n_tokens": n}


def worst_sequence(lp_gen: Tensor, lp_train: Tensor, mask: Tensor) -> int:
    """Index of the sequence with the largest mean exp(|r|) over its valid tokens. Sequences with
    no valid token are never chosen; an all-empty mask raises ValueError (nothing to show). A
    sequence whose valid tokens hold NaN log-probs ranks as the worst (argmax treats NaN as max)."""
    e = sequence_errors(lp_gen, lp_train, mask)
    has = e["n_tokens"] > 0
    if not bool(has.any()):
        raise ValueError("worst_sequence: the mask has no valid token")
    return int(torch.where(has, e["seq_err"], -math.inf).argmax())
