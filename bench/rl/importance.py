"""Importance-sampling correction of the trainer/generator mismatch (DESIGN.md §6).

The rollout was sampled from the generator p_g, but the policy gradient is taken for the trainer's
p_t. Weighting each token's loss by ρ = p_t / p_g = exp(r), r = lp_t − lp_g, makes the estimate
unbiased, but ρ is heavy-tailed (one token the generator under-rated by 100x dominates a batch),
so every practical variant trades a little bias for a lot less variance:
  none      1: plain GRPO/PPO; the metrics are still logged to show what a correction would do
  tis       min(ρ, C) per token (truncated IS); optional lower clamp max(·, lower_cap)
  icepop    ρ·1[lo ≤ ρ ≤ hi] per token: tokens far outside the band get no gradient at all
  seq_tis   min(exp(Σ_t r), C) on every token of the sequence: the correct ratio for a
            sequence-level reward, but it compounds with length, hence the cap
  seq_mask  exp(Σ_t r)·1[lo ≤ exp(Σ_t r) ≤ hi]
  geo_mask  drop the sequence when the geometric-mean ratio exp(mean_t r) leaves [lo, hi]
            (length-normalised, so a long response is not dropped just for being long);
            kept tokens use min(ρ, C)
Options, applied on top of every mode (none included): `veto` zeroes a whole sequence holding any
token with ρ < veto (a token the trainer finds near-impossible signals a numerics failure, not
exploration); `batch_normalize` divides the weights by their batch mean, so the loss scale does
not drift with the amount of mismatch: for the token modes the mean over valid tokens, for the
sequence modes (seq_tis, seq_mask) the mean over sequences with a valid token, each sequence
counted once, as verl's `rollout_is_batch_normalize` (verl/trainer/ppo/rollout_corr_helper.py);
zeroed weights count (verl normalizes before its separate rejection mask instead).

Numerics. float64 throughout, padding zeroed before use (it may hold −inf/NaN). Each log-ratio
(r, Σ_t r, mean_t r) is clamped to ±CLAMP = ±20 before exp, so ρ ∈ [e^−20, e^20] and sequence
ratios stay finite even when Σ_t r is in the hundreds. Since cap > 0 and every ratio is ≥ e^−20,
a weight is 0 exactly when masking (band or veto) zeroed it. The veto compares the unclamped ρ
(never used as a weight, so it cannot overflow), hence even veto < e^−20 works. Weights are
detached (they correct the estimator, they are not trained through), float32, 0 off the mask.

Metrics, over the valid tokens of the input mask (std is the population std, ddof = 0):
  is/raw_*            token ρ before truncation/masking (clamped ρ, so raw_max ≤ e^20)
  is/weight_*         the returned weights (after masking, veto and batch_normalize)
  is/ess              Kish effective sample size of the weights the loss uses, as a fraction of
                      the valid tokens, 1 / mean((w / mean w)²) = (Σw)² / (N·Σw²): 1 for uniform
                      weights, 1/N when one token carries everything, 0 when every weight is 0
  is/rollout_is_eff_sample_size  verl's ESS (rollout_corr_helper.py compute_is_metrics): the same
                      form, +1e-8 in the inner mean, on the *untruncated* ratios (token ρ, or
                      exp(Σ_t r) for the sequence modes) clamped to [1/C, C], C the mode's upper
                      bound (cap, or hi for the band modes); masking and veto unseen
  is/frac_high, _low  fraction of raw token ρ outside the mode's bounds: high is ρ > hi for the band
                      modes (icepop, seq_mask, geo_mask) and ρ > cap otherwise; low is ρ < lower_cap
                      when given (tis), else ρ < lo
  is/token_masked_frac  valid tokens whose weight masking zeroed (veto included)
  is/seq_masked_frac    sequences with valid tokens whose weights are all zeroed (veto included)
  is/veto_seq_frac      sequences with valid tokens dropped by the veto
An all-empty mask returns all-zero weights and NaN for every metric (a mean over nothing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from bench.rl.mismatch import CLAMP, prepare

IS_KEYS = ("raw_mean", "raw_std", "raw_min", "raw_max", "weight_mean", "weight_std", "weight_min",
           "weight_max", "ess", "frac_high", "frac_low", "token_masked_frac", "seq_masked_frac",
           "veto_seq_frac", "rollout_is_eff_sample_size")
SEQUENCE_MODES = ("seq_tis", "seq_mask")  # one weight per sequence: batch_normalize averages sequences


class Ratios(NamedTuple):
    """What a mode may look at (float64)."""
    rho: Tensor   # [B, T] per-token exp(clamp(r)); 1 off the mask
    seq: Tensor   # [B, 1] exp(clamp(Σ_t r))
    geo: Tensor   # [B, 1] exp(clamp(mean_t r)); 1 for a sequence with no valid token


@dataclass(frozen=True)
class Options:
    cap: float
    lo: float
    hi: float
    lower_cap: float | None


Mode = Callable[[Ratios, Options], Tensor]
IS_MODES: dict[str, Mode] = {}      # name -> [B, T] weights (masking applied by the caller)
BAND_MODES: set[str] = set()        # modes whose bounds are the band [lo, hi] rather than cap


def _register(name: str, band: bool = False) -> Callable[[Mode], Mode]:
    def deco(fn: Mode) -> Mode:
        IS_MODES[name] = fn
        if band:
            BAND_MODES.add(name)
        return fn
    return deco


def _in_band(x: Tensor, o: Options) -> Tensor:
    return (x >= o.lo) & (x <= o.hi)


@_register("none")
def _none(x: Ratios, o: Options) -> Tensor:
    return torch.ones_like(x.rho)


@_register("tis")
def _tis(x: Ratios, o: Options) -> Tensor:
    w = x.rho.clamp(max=o.cap)
    return w if o.lower_cap is None else w.clamp(min=o.lower_cap)


@_register("icepop", band=True)
def _icepop(x: Ratios, o: Options) -> Tensor:
    return x.rho * _in_band(x.rho, o)


@_register("seq_tis")
def _seq_tis(x: Ratios, o: Options) -> Tensor:
    return x.seq.clamp(max=o.cap).expand_as(x.rho)


@_register("seq_mask", band=True)
def _seq_mask(x: Ratios, o: Options) -> Tensor:
    return (x.seq * _in_band(x.seq, o)).expand_as(x.rho)


@_register("geo_mask", band=True)
def _geo_mask(x: Ratios, o: Options) -> Tensor:
    return x.rho.clamp(max=o.cap) * _in_band(x.geo, o)


def check_options(mode: str, cap: float = 2.0, lo: float = 0.5, hi: float = 2.0, veto: float | None = None,
                  lower_cap: float | None = None) -> None:
    """Raise ValueError naming the bad value (and, for the mode, the valid choices)."""
    if mode not in IS_MODES:
        raise ValueError(f"unknown is_correction mode {mode!r}; valid: {', '.join(IS_MODES)}")
    for name, v in (("cap", cap), ("lo", lo), ("hi", hi), ("veto", veto), ("lower_cap", lower_cap)):
        if v is not None and not math.isfinite(v):
            raise ValueError(non_finite(name, v))
    if not cap > 0:
        raise ValueError(f"is_correction cap={cap} must be > 0")
    if not 0 <= lo <= hi:
        raise ValueError(f"is_correction band lo={lo}, hi={hi} must satisfy 0 <= lo <= hi")
    if veto is not None and not veto >= 0:
        raise ValueError(f"is_correction veto={veto} must be >= 0 or None")
    if lower_cap is not None:
        if mode != "tis":
            raise ValueError(f"is_correction lower_cap={lower_cap} applies only to mode 'tis', not {mode!r}")
        if not 0 <= lower_cap <= cap:
            raise ValueError(f"is_correction lower_cap={lower_cap} must satisfy 0 <= lower_cap <= cap={cap}")


# Why a non-finite bound is refused rather than taken literally: each one either does nothing
# under the option's name or zeroes every weight (a run that trains on nothing), and a ratio never
# exceeds e^CLAMP anyway, so a large finite value (1e9) already means "unbounded" where that is meant.
NON_FINITE = {
    "cap": ("truncates nothing (the weights are plain untruncated IS ratios)",
            "a finite cap > 0 such as 2.0, or is_correction=none for no correction"),
    "hi": ("leaves the band open above (no high ratio is ever masked)", "a finite hi >= lo such as 2.0"),
    "lo": ("masks every token (no ratio reaches it)", "a finite 0 <= lo <= hi such as 0.5"),
    "veto": ("drops every sequence (every ratio is below it)", "a finite veto >= 0 such as 1e-4, or null (off)"),
    "lower_cap": ("lifts every weight to inf", "a finite 0 <= lower_cap <= cap, or null (off)"),
}


def non_finite(name: str, v: float) -> str:
    """The one-line reason a non-finite IS option is refused, with the finite values that work."""
    what, valid = NON_FINITE[name]
    why = "is not a number" if math.isnan(v) else what if v > 0 else "is not a finite number"
    return f"is_correction.{name}={v} {why}; valid: {valid}"


def importance_weights(lp_gen: Tensor, lp_train: Tensor, mask: Tensor, mode: str = "tis", cap: float = 2.0,
                       lo: float = 0.5, hi: float = 2.0, veto: float | None = None, batch_normalize: bool = False,
                       lower_cap: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """[B, T] detached float32 weights (0 where mask is False) and the `is/*` metrics.
    lp_gen, lp_train: [B, T] float (any float dtype); mask: [B, T] bool of valid response tokens."""
    check_options(mode, cap, lo, hi, veto, lower_cap)
    lg, lt, m = prepare(lp_gen, lp_train, mask)
    mf = m.double()
    r = lt - lg                                        # 0 off the mask, so row sums are Σ_t r
    n = mf.sum(1, keepdim=True)
    seq_r = r.sum(1, keepdim=True)
    x = Ratios(rho=torch.exp(r.clamp(-CLAMP, CLAMP)), seq=torch.exp(seq_r.clamp(-CLAMP, CLAMP)),
               geo=torch.exp((seq_r / n.clamp(min=1)).clamp(-CLAMP, CLAMP)))
    w = IS_MODES[mode](x, Options(cap, lo, hi, lower_cap)).double() * mf
    if veto is not None:
        vetoed = ((torch.exp(r) < veto) & m).any(1)
        w = w * ~vetoed[:, None]
    else:
        vetoed = torch.zeros(m.shape[0], dtype=torch.bool, device=m.device)
    if batch_normalize:
        if mode in SEQUENCE_MODES:                     # verl: per-sequence mean, non-empty sequences
            has = (n > 0).double()
            mean_w = ((w.sum(1, keepdim=True) / n.clamp(min=1)) * has).sum() / has.sum()
        else:
            mean_w = w.sum() / mf.sum()
        w = torch.where(mean_w > 0, w / mean_w, w)     # all zero (or no valid token): nothing to scale
    high = hi if mode in BAND_MODES else cap
    low = lower_cap if lower_cap is not None else lo
    untruncated = x.seq.expand_as(x.rho) if mode in SEQUENCE_MODES else x.rho
    return w.float(), _metrics(x.rho, w, m, vetoed, high, low, untruncated.clamp(1 / high, high))


def _metrics(rho: Tensor, w: Tensor, m: Tensor, vetoed: Tensor, high: float, low: float,
             clamped: Tensor) -> dict[str, float]:
    if not bool(m.any()):
        return {f"is/{k}": math.nan for k in IS_KEYS}
    mf = m.double()
    n_tok = mf.sum()

    def mean(x: Tensor) -> Tensor:                    # over valid tokens
        return (x * mf).sum() / n_tok

    def stats(x: Tensor) -> list[Tensor]:
        mu = mean(x)
        return [mu, mean(torch.where(m, x - mu, 0.0) ** 2).sqrt(),
                torch.where(m, x, math.inf).min(), torch.where(m, x, -math.inf).max()]

    mean_w = mean(w)
    # Kish ESS written as mean(w)² / mean(w²), the same as 1 / mean((w / mean w)²).
    ess = torch.where(mean_w > 0, mean_w ** 2 / mean(w * w), torch.zeros_like(mean_w))
    verl_ess = 1.0 / mean((clamped / (mean(clamped) + 1e-8)) ** 2)
    zeroed = (w == 0) & m                              # only masking can zero a weight (see module doc)
    has = m.any(1)
    n_seq = has.double().sum()
    seq_zeroed = has & ~(m & ~zeroed).any(1)
    values = torch.stack([
        *stats(rho), *stats(w), ess,
        mean((rho > high).double()), mean((rho < low).double()), mean(zeroed.double()),
        seq_zeroed.double().sum() / n_seq, (vetoed & has).double().sum() / n_seq, verl_ess,
    ]).tolist()                                        # one host sync for all metrics
    return {f"is/{k}": v for k, v in zip(IS_KEYS, values)}
