"""The gate's statistics: is a candidate's drop within tolerance, beyond it, or not yet known?

Setting. A rule with a relative bound turns each baseline seed b_i into a limit t_i (b_i − v for
max_drop, b_i − v|b_i| for rel_drop, + for the increase bounds). With c_j the candidate seeds,
the *margin* is how far the candidate sits on the good side of the limit:
    margin = mean(c) − mean(t)   (bounds where lower is worse)     margin = mean(t) − mean(c)   (else)
margin > 0: within tolerance; margin < 0: a regression beyond tolerance.

Standard error and degrees of freedom (Welch 1947; Satterthwaite 1946), with a = s_c²/n_c,
b = s_t²/n_t and sample variances s² (ddof 1):
    se = sqrt(a + b),   df = (a + b)² / (a²/(n_c − 1) + b²/(n_t − 1))
With one seed on a side its variance cannot be estimated; it is then taken equal to the other
side's (se = s·sqrt(1/n_c + 1/n_t), df = n − 1 of the side with seeds). With one seed on both
sides there is no spread at all to judge noise by. With zero spread on both sides (e.g. event
counts all equal) the comparison is exact: se = 0.

Non-inferiority (the default test). q = t_{1−α}(df), the one-sided (1 − α) quantile:
    pass          margin − q·se > 0  (the one-sided 1 − α lower confidence bound clears the limit,
                                      i.e. H0 "margin ≤ 0" is rejected at level α)
    regression    margin + q·se < 0  (the upper bound is below the limit: H0 "margin ≥ 0" rejected)
    inconclusive  otherwise: the (1 − 2α) interval margin ± q·se straddles the limit.
A same-distribution rerun with tolerance v passes once se is small against v; a drop of twice the
tolerance is a regression once se is small against v; with too few seeds either is inconclusive,
never a pass. `seeds_needed` is the smallest n per side for which, at the observed margin and
spread (s² = (s_c² + s_t²)/2, df = 2n − 2), q·s·sqrt(2/n) < |margin| would decide it.
`min_detectable` is the drop from the baseline mean that this many seeds flag as a regression
with power 1 − β (0.8): tolerance + (t_{1−α}(df) + t_{1−β}(df))·se — the textbook minimum
detectable effect, shifted by the tolerance.

Pairing by seed (issue 25). Runs that share a seed share initial weights, prompts and data order
(common random numbers), so when the candidate and baseline sides hold the same seeds, each once,
the gate compares the per-seed differences d_i = c_i − t_i (candidate minus limit, seed i):
    margin = ±mean(d),  se = sd(d)/sqrt(n) (ddof 1),  df = n − 1          (the paired t-test)
and decides exactly as above with these se, df; min_detectable uses them too. The seed-to-seed
spread both sides share cancels in d, so se is smaller when runs of one seed are correlated.
Otherwise (different seeds, repeats, fewer than 2 pairs) it falls back to Welch.

Welch (the gate's behaviour before non-inferiority, kept by name): a regression only when the
one-sided Welch t-test rejects "margin ≥ 0" at level α; anything else passes, so too few seeds
read as a pass. One seed on either side: plain comparison of the means with the limit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

POWER = 0.8
MAX_SEEDS = 1000  # seeds_needed search limit: beyond it, "more than 1000"
OUTCOMES = ("pass", "regression", "inconclusive")


@dataclass(frozen=True)
class Decision:
    outcome: str            # pass | regression | inconclusive
    method: str             # how it was decided, for the report
    margin: float           # signed distance from the limit, > 0 on the good side
    half_width: float       # q·se: margin ± half_width is the (1 − 2α) interval (nan: unknown)
    p_value: float | None   # one-sided p of the hypothesis the outcome rejected (None: no test)
    seeds_needed: int | None = None   # inconclusive only: seeds per side to decide (None: > MAX_SEEDS)
    se: float = math.nan
    df: float = math.nan


def welch_se_df(c: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """(se, df) of mean(c) − mean(t) as the module docstring defines them; (nan, nan) when both
    sides have one seed."""
    nc, nt = len(c), len(t)
    if nc < 2 and nt < 2:
        return math.nan, math.nan
    if nc < 2 or nt < 2:  # one side without a variance estimate: borrow the other side's
        s2 = float(np.var(t if nc < 2 else c, ddof=1))
        return math.sqrt(s2 * (1 / nc + 1 / nt)), float(max(nc, nt) - 1)
    a, b = float(np.var(c, ddof=1)) / nc, float(np.var(t, ddof=1)) / nt
    if a + b == 0:
        return 0.0, math.inf
    return math.sqrt(a + b), (a + b) ** 2 / (a * a / (nc - 1) + b * b / (nt - 1))


def t_quantile(p: float, df: float) -> float:
    """Student-t quantile; the normal one at df = inf (zero spread on one side)."""
    return float(sps.norm.ppf(p)) if math.isinf(df) else float(sps.t.ppf(p, df))


def seeds_needed(margin: float, c: np.ndarray, t: np.ndarray, alpha: float) -> int | None:
    """Smallest n (seeds per side) whose (1 − 2α) interval would clear the limit at this margin
    and spread; None when more than MAX_SEEDS would be needed (margin at the limit)."""
    var = [float(np.var(x, ddof=1)) for x in (c, t) if len(x) >= 2]
    if not var or not math.isfinite(margin) or margin == 0:
        return None
    s = math.sqrt(sum(var) / len(var))
    if s == 0:
        return max(len(c), len(t))
    for n in range(2, MAX_SEEDS + 1):
        if t_quantile(1 - alpha, 2 * n - 2) * s * math.sqrt(2 / n) < abs(margin):
            return n
    return None


def min_detectable(tolerance: float, se: float, df: float, alpha: float, power: float = POWER) -> float:
    """Drop from the baseline mean flagged as a regression with probability `power`."""
    if not math.isfinite(se):
        return math.nan
    return tolerance + (t_quantile(1 - alpha, df) + t_quantile(power, df)) * se if se > 0 else tolerance


def paired_se_df(d: np.ndarray) -> tuple[float, float]:
    """(se, df) of mean(d) for per-seed differences d: sd(d)/sqrt(n), n − 1; (nan, nan) below 2
    pairs; (0, inf) when every difference is equal."""
    n = len(d)
    if n < 2:
        return math.nan, math.nan
    var = float(np.var(d, ddof=1))
    return (0.0, math.inf) if var == 0 else (math.sqrt(var / n), float(n - 1))


def pair_by_seed(c: np.ndarray, cs, t: np.ndarray, ts) -> np.ndarray | None:
    """Per-seed differences c − t, in sorted seed order, when both sides hold the same seeds, each
    once, at least 2 of them, all values finite; else None (the caller uses Welch)."""
    cs, ts = list(cs or []), list(ts or [])
    if (len(cs) != len(c) or len(ts) != len(t) or None in cs or None in ts or len(set(cs)) != len(cs)
            or set(cs) != set(ts) or len(cs) < 2):
        return None
    cd, td = dict(zip(cs, c)), dict(zip(ts, t))
    keys = sorted(cd, key=str)
    d = np.array([cd[k] - td[k] for k in keys], dtype=float)
    return d if np.isfinite(d).all() else None


def noninferiority(c: np.ndarray, t: np.ndarray, margin: float, alpha: float,
                   pairs: np.ndarray | None = None) -> Decision:
    """pairs: the per-seed differences (pair_by_seed) when the sides pair; else Welch."""
    if pairs is not None:
        return _noninferiority_se(*paired_se_df(pairs), c, t, margin, alpha, "paired t")
    return _noninferiority_se(*welch_se_df(c, t), c, t, margin, alpha, "Welch t")


def _noninferiority_se(se: float, df: float, c: np.ndarray, t: np.ndarray, margin: float, alpha: float,
                       how: str) -> Decision:
    if math.isnan(se):
        return Decision("inconclusive", "non-inferiority: 1 seed per side, no spread to judge noise by",
                        margin, math.nan, None, seeds_needed=None)
    if se == 0:
        return Decision("pass" if margin >= 0 else "regression", "non-inferiority: no spread (exact)",
                        margin, 0.0, None, se=0.0, df=df)
    h = t_quantile(1 - alpha, df) * se
    method = f"non-inferiority, {how}, α={alpha:g}"
    if margin - h > 0:
        return Decision("pass", method, margin, h, float(sps.t.sf(margin / se, df)), se=se, df=df)
    if margin + h < 0:
        return Decision("regression", method, margin, h, float(sps.t.cdf(margin / se, df)), se=se, df=df)
    return Decision("inconclusive", method, margin, h, float(sps.t.sf(margin / se, df)),
                    seeds_needed=seeds_needed(margin, c, t, alpha), se=se, df=df)


def welch(c: np.ndarray, t: np.ndarray, margin: float, alpha: float, pairs: np.ndarray | None = None) -> Decision:
    """The pre-non-inferiority gate: regression only when the data prove one (paired by seed when
    `pairs` is given: the one-sided paired t-test)."""
    if pairs is not None:
        se, df = paired_se_df(pairs)
        if se == 0:
            return Decision("regression" if margin < 0 else "pass", "tolerance (no spread, paired)", margin, 0.0,
                            None, se=0.0, df=df)
        p = float(sps.t.cdf(margin / se, df))
        return Decision("regression" if p < alpha else "pass", f"paired t one-sided, α={alpha:g}", margin,
                        t_quantile(1 - alpha, df) * se, p, se=se, df=df)
    se, df = welch_se_df(c, t)
    if min(len(c), len(t)) < 2:
        return Decision("regression" if margin < 0 else "pass", "tolerance (1 seed)", margin, math.nan,
                        None, se=se, df=df)
    if se == 0:
        return Decision("regression" if margin < 0 else "pass", "tolerance (no spread)", margin, 0.0,
                        None, se=0.0, df=df)
    p = float(sps.t.cdf(margin / se, df))
    return Decision("regression" if p < alpha else "pass", f"Welch t one-sided, α={alpha:g}", margin,
                    t_quantile(1 - alpha, df) * se, p, se=se, df=df)


TESTS = {"noninferiority": noninferiority, "welch": welch}
