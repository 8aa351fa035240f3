""""What precision cost": the few lines a researcher reads first (top of report.md, end of compare).

Per candidate variant, against the baseline variant (the all-bf16 one unless told otherwise):
  Δ acc      final held-out accuracy (evals, every eval/*/accuracy averaged), candidate − baseline
  Δ reward   rollout/reward_mean averaged over the last 5 logged steps (GRPO only)
  both as  mean difference ± q·se,  se and df by Welch (stats.welch_se_df), q = t_{1−α}(df): the
  (1 − 2α) = 90% interval whose ends are the gate's one-sided 95% bounds
  tmpe, k3   mismatch/token_mult_prob_error and mismatch/gen_kl_k3, mean over seeds of the mean
             of the last 5 logged steps (the candidate's own level, not a difference)
  events     counts by kind over all seeds
  verdict    the gate's outcome under the default rules for the recipe (conf/gate/<recipe>.yaml)
             with the baseline variant's runs as the baseline, in words
  cost       what the precision saves, next to the damage (bench/perf/cost.py): the variant's mean over
             seeds of rollout time, step time, tokens/s and joules per token (when a counter
             measured them), relative to the baseline's, and Δ accuracy: "rollout −x%, step −y%,
             energy/token −z%, accuracy +0.010". Only what both sides measured is shown.
  drift      mismatch/<m>_growth (bench/numerics/drift.py) of tmpe and gen_kl_k3 recomputed from each
             run's metrics.jsonl with the run's policy.drift_window, mean over seeds; shown in the
             verdict words when it exceeds the run's policy.drift_growth ("k3 grows ×3.1")
  detects    the smallest accuracy drop the accuracy rule would flag with 80% power at these seeds
             (stats.min_detectable; paired by seed when both sides share seeds), on every outcome
When a variant uses IS correction and the same precisions without it are in the report with an
accuracy drop that its interval shows (Δ + half-width < 0), the verdict adds how much of that drop
the correction recovers.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from bench.perf import cost as costs
from bench.core.errors import BadInput
from bench.core.events import KINDS
from bench.numerics.drift import series_growth
from bench.numerics.policy import PolicyConfig
from bench.report import baseline as bl
from bench.report import gate as gt
from bench.report import stats
from bench.report.runs import Variant

ALPHA = 0.05
REWARD = "rollout/reward_mean"
MISMATCH = ("mismatch/token_mult_prob_error", "mismatch/gen_kl_k3")


def _acc(rec: dict) -> np.ndarray | None:
    """Per-seed final accuracy, averaged over every eval/*/accuracy the variant logged."""
    cols = [bl.values(rec, "evals", m, "final") for m in sorted(rec.get("evals", {})) if m.endswith("/accuracy")]
    cols = [c for c in cols if c is not None]
    return np.mean(cols, axis=0) if cols else None


def _reward(rec: dict) -> np.ndarray | None:
    return bl.values(rec, "metrics", REWARD, "mean_last_k", 5) if REWARD in rec.get("metrics", {}) else None


def diff(c: np.ndarray | None, b: np.ndarray | None, alpha: float = ALPHA) -> tuple[float, float, int]:
    """(mean(c) − mean(b), half-width of its (1 − 2α) Welch interval (nan: unknown), n of c)."""
    if c is None or b is None:
        return math.nan, math.nan, 0
    c, b = c[np.isfinite(c)], b[np.isfinite(b)]
    if not c.size or not b.size:
        return math.nan, math.nan, int(c.size)
    se, df = stats.welch_se_df(c, b)
    h = math.nan if math.isnan(se) else 0.0 if se == 0 else stats.t_quantile(1 - alpha, df) * se
    return float(c.mean() - b.mean()), h, int(c.size)


def pm(d: float, h: float) -> str:
    if math.isnan(d):
        return "—"
    return f"{d:+.3f}" + ("" if math.isnan(h) else f" ± {h:.3f}")


def _words(outcomes: list, acc: tuple, recovered: float | None, drift: dict | None = None) -> str:
    n = acc[2]
    dacc = f"Δacc {pm(acc[0], acc[1])}" if not math.isnan(acc[0]) else ""
    regress = [v for v in outcomes if v.regression]
    unsure = [v for v in outcomes if v.inconclusive]
    text = _outcome_words(n, dacc, regress, unsure)
    # the smallest drop these seeds would catch, for the accuracy rule when there is one
    mdd = [v for v in outcomes if "accuracy" in v.metric and math.isfinite(v.min_detectable)]
    if mdd:
        text += f"; detects accuracy drops ≥ {mdd[0].min_detectable:.3f}{' (paired by seed)' if mdd[0].paired else ''}"
    if drift:
        text += "; drift: " + ", ".join(f"{m} grows ×{g:.2g}" for m, g in drift.items())
    if recovered is not None:
        text += f"; IS recovers {100 * recovered:.0f}% of the accuracy drop"
    return text


def _outcome_words(n: int, dacc: str, regress: list, unsure: list) -> str:
    if regress:
        what = ", ".join(dict.fromkeys(v.rule.label for v in regress))
        text = f"regression ({what}; n={n}{', ' + dacc if dacc else ''})"
    elif unsure:
        need = [v.seeds_needed for v in unsure if v.seeds_needed]
        seeds = f"need {max(need)} seeds" if need else "need more seeds"
        text = f"inconclusive — {seeds} (n={n}{', ' + dacc if dacc else ''})"
    else:
        text = f"no measurable cost (n={n}{', ' + dacc if dacc else ''})"
    return text


def drift_of(runs) -> dict[str, float]:
    """Mean over runs of each watched metric's growth (bench/numerics/drift.py), only where it
    exceeds the runs' policy.drift_growth: {short name: growth}."""
    out = {}
    for m, short in (("token_mult_prob_error", "tmpe"), ("gen_kl_k3", "k3")):
        gs, limit = [], PolicyConfig.drift_growth
        for r in runs:
            pol = (r.config.get("policy") or {})
            limit = float(pol.get("drift_growth", PolicyConfig.drift_growth))
            g = series_growth(r.series("metrics", f"mismatch/{m}")[1], m,
                              int(pol.get("drift_window", PolicyConfig.drift_window)))
            if math.isfinite(g):
                gs.append(g)
        if gs and float(np.mean(gs)) > limit:
            out[short] = float(np.mean(gs))
    return out


def summarize(variants: dict[str, Variant], base: str, alpha: float = ALPHA) -> list[dict]:
    """One row per non-baseline variant: name, acc/reward (d, h, n), tmpe, k3, events, words."""
    runs = [r for v in variants.values() for r in v.runs]
    record = bl.record_runs(runs)
    brec = record["variants"][base]
    verdicts, note = [], None
    try:
        # all runs, so the candidate variants are grouped (and named) exactly as `variants`
        verdicts = gt.gate(record, None, runs, alpha=alpha, baseline_variant=base, allow_config_mismatch=True)
    except BadInput as e:  # e.g. mixed recipes: the table still shows the differences
        note = f"gate not run: {e}"
    acc_of = {n: diff(_acc(rec), _acc(brec), alpha) for n, rec in record["variants"].items()}
    spent = variant_costs(variants)
    rows = []
    for name, rec in record["variants"].items():
        if name == base:
            continue
        mism = []
        for m in MISMATCH:
            x = bl.values(rec, "metrics", m, "mean_last_k", 5) if m in rec.get("metrics", {}) else None
            mism.append(float(np.nanmean(x)) if x is not None and np.isfinite(x).any() else math.nan)
        ev = Counter(str(e.get("kind")) for r in variants[name].runs for e in r.events)
        plain = name.split(" is=")[0] if " is=" in name else None
        recovered = None
        # Only a drop the data show (its interval below zero) has a share to recover: the ratio of
        # two noise-sized deltas ("IS recovers -350%") says nothing.
        if plain in acc_of and acc_of[plain][0] + acc_of[plain][1] < 0 and not math.isnan(acc_of[name][0]):
            recovered = 1 - acc_of[name][0] / acc_of[plain][0]
        words = note or _words([v for v in verdicts if v.variant == name], acc_of[name], recovered,
                               drift_of(variants[name].runs))
        delta = costs.cost_delta(spent[base], spent[name])
        acc = None if math.isnan(acc_of[name][0]) else acc_of[name][0]
        # A saving only where both sides ran on hardware that executes their precisions.
        native = all(costs.executed_natively(r.summary) for r in variants[base].runs + variants[name].runs)
        rows.append({"variant": name, "acc": acc_of[name], "reward": diff(_reward(rec), _reward(brec), alpha),
                     "tmpe": mism[0], "k3": mism[1],
                     "events": ", ".join(f"{k} {ev[k]}" for k in KINDS if ev[k]) or "none", "verdict": words,
                     "cost": costs.labelled(delta, native, acc) if costs.measured(delta) else None,
                     "native": native})
    return rows


def variant_costs(variants: dict[str, Variant]) -> dict[str, dict]:
    """Each variant's time and energy figures (bench.perf.cost.variant_cost over its runs)."""
    return {name: costs.variant_cost([costs.run_cost(r.metrics, r.summary) for r in v.runs])
            for name, v in variants.items()}


def split(variants: dict[str, Variant]) -> list[str]:
    """"Where the time goes": each variant's mean step and its phase split (none without timing)."""
    spent = {n: c for n, c in variant_costs(variants).items() if c["phase_s"]}
    if not spent:
        return []
    return ["## Where the time goes", "",
            "Mean step time over the synced steps after the first (eval and checkpoint steps included) "
            "and each phase's share of it (`time/<phase>_s`, bench/perf/timing.py); mean over seeds.", "",
            costs.split_table(spent), ""]


def _g(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.4g}"


def markdown(rows: list[dict], base: str, alpha: float = ALPHA) -> list[str]:
    lines = ["## What precision cost", "",
             f"Against `{base}`. Δ = variant − baseline, ± the {100 * (1 - 2 * alpha):g}% Welch interval; "
             f"acc: final held-out accuracy; reward: mean of the last 5 steps; tmpe / k3: the variant's "
             f"token_mult_prob_error and gen_kl_k3 (last 5 steps); verdict: `fp8bench gate` with the default "
             f"rules (non-inferiority); cost: the variant's time and energy relative to the baseline's "
             f"(−: it saves) beside its Δ accuracy.", "",
             "| variant | Δ acc | Δ reward | tmpe | gen k3 | events | cost | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    if any(r["cost"] and not r["native"] for r in rows):
        lines[2:2] = [costs.EMULATION_NOTE, ""]
    for r in rows:
        cells = [r["variant"], pm(*r["acc"][:2]), pm(*r["reward"][:2]), _g(r["tmpe"]), _g(r["k3"]), r["events"],
                 r["cost"] or "—", r["verdict"]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return lines + [""]


def console(rows: list[dict], base: str) -> list[str]:
    """The same rows as short lines: `<variant>: <verdict>` (vs <base>)."""
    return [f"What precision cost (vs {base}):"] + [
        f"  {r['variant']}: {r['verdict']}" + (f"; {r['cost']}" if r["cost"] else "") for r in rows]
