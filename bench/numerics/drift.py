"""Mismatch drift (issue 25): does the trainer/generator disagreement grow over training?

verl PR 7519 saw an FP8 tensorwise rollout's KL grow 0.010 -> 0.031 over 32 steps while MXFP8
stayed flat: a one-step threshold (mismatch_spike) sees neither the slow rise nor its start. Per
watched metric m (WATCHED), on its excess over the identical-sides value (token_mult_prob_error
is 1.0 when the sides agree, gen_kl_k3 is 0), over the steps logged so far x_1..x_n:
    mismatch/<m>_growth = median(x_{n−W+1..n}) / median(x_{1..W})      (logged once n ≥ 2W)
i.e. the last window's median over the first window's, W = policy.drift_window. Medians, so one
spike step moves neither end. Undefined (not logged) while the first window's median is 0 (an
exact generator: nothing to grow from).
Event `mismatch_drift` (DESIGN §7), once per metric and run, on the first step that completes W
consecutive steps on each of which
    growth > policy.drift_growth  and  median(last window) ≥ the metric's floor
(policy.drift_floor_tmpe for token_mult_prob_error's excess, policy.drift_floor_k3 for gen_kl_k3):
the floor keeps a rise from 1e-7 to 1e-6 — harmless, and usual as a policy sharpens — from
reading as drift. Why sustained for a whole window: gen_kl_k3 is ∝ r² per token, so its 10-step
median wanders; in 25 runs of 120 steps with flat mismatch (docs/findings.md, "What disagreement
costs") its growth crossed 2.0 in 3 runs, for 3-6 steps each, and fell back (end-of-run growth
0.9-1.3). A real drift stays above: verl PR 7519's rise (below) does, and fires W steps after it
first crosses. Its value is the growth, stat "growth", threshold drift_growth. The event is always
action "log": a trend is an early warning, not a reason to stop a run.

Pure Python (no torch): the report recomputes the same growth from metrics.jsonl.
"""
from __future__ import annotations

import math
from statistics import median

# metric (under mismatch/) -> its value when trainer and generator agree exactly
WATCHED = {"token_mult_prob_error": 1.0, "gen_kl_k3": 0.0}


def growth(values, window: int) -> float:
    """median(last `window`) / median(first `window`) of the finite values, each taken as its
    excess over nothing (callers subtract the zero point); nan when fewer than 2·window values or
    a first-window median of 0."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if window < 1 or len(xs) < 2 * window:
        return math.nan
    first, last = median(xs[:window]), median(xs[-window:])
    return last / first if first > 0 else math.nan


def series_growth(values, metric: str, window: int) -> float:
    """growth() of a logged mismatch/<metric> series, on its excess over WATCHED[metric]."""
    zero = WATCHED[metric]
    return growth([v - zero for v in values if v is not None], window)


class DriftWatch:
    """Fed once per recipe step with the logged metrics; returns the growth metrics to log and
    the (metric, growth, last median, floor) of each first crossing for the caller to emit."""

    def __init__(self, window: int, threshold: float, floor_tmpe: float, floor_k3: float):
        self.window, self.threshold = int(window), float(threshold)
        self.floors = {"token_mult_prob_error": float(floor_tmpe), "gen_kl_k3": float(floor_k3)}
        self.series: dict[str, list[float]] = {m: [] for m in WATCHED}
        self.above: dict[str, int] = {m: 0 for m in WATCHED}  # consecutive steps over threshold and floor
        self.fired: set[str] = set()

    def update(self, metrics: dict) -> tuple[dict[str, float], list[tuple[str, float, float, float]]]:
        out, crossed = {}, []
        for m, zero in WATCHED.items():
            v = metrics.get(f"mismatch/{m}")
            if v is None or not math.isfinite(v):
                continue
            xs = self.series[m]
            xs.append(float(v) - zero)
            g = growth(xs, self.window)
            if math.isnan(g):
                continue
            out[f"mismatch/{m}_growth"] = g
            last = median(xs[-self.window:])
            self.above[m] = self.above[m] + 1 if g > self.threshold and last >= self.floors[m] else 0
            if m not in self.fired and self.above[m] >= self.window:
                self.fired.add(m)
                crossed.append((m, g, last, self.floors[m]))
        return out, crossed

    def state_dict(self) -> dict:
        return {"series": {m: list(v) for m, v in self.series.items()}, "above": dict(self.above),
                "fired": sorted(self.fired)}

    def load_state_dict(self, s: dict) -> None:
        self.series = {m: list(s["series"].get(m, [])) for m in WATCHED}
        self.above = {m: int(s.get("above", {}).get(m, 0)) for m in WATCHED}  # older checkpoints: 0
        self.fired = set(s["fired"])
