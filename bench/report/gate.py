"""Precision gate: judge candidate runs against a baseline under YAML rules (rules.py).

Outcomes and exit codes (`fp8bench gate`; gate_output.exit_code):
  0 pass          every check shows the candidate within its tolerance
  1 regression    some check shows a regression beyond tolerance (or a hard limit broken)
  2 bad input     one line on stderr, before anything is judged (also: configs that differ)
  3 inconclusive  no regression shown, but some check cannot tell yet: the report says how many
                  seeds would decide it

Per rule and candidate variant, each seed gives one value of the rule's statistic:
  * relative bounds (max_drop, rel_drop, max_increase, rel_increase) compare the candidate seeds
    with the baseline seeds shifted by the tolerance. The default test is non-inferiority (pass
    only when the data show the candidate is within tolerance); `test: welch` on a rule, or
    `--test welch`, keeps the older rule "regression only when the data prove one". Both are
    derived in stats.py.
  * absolute bounds (abs_min / abs_max) are hard limits every seed must meet: one NaN run out of
    three is a failure, not noise.
  * a candidate seed whose value is missing or non-finite (a diverged run) is a regression.

Before judging, each candidate variant's defining config (identity.py) is compared with the
baseline variant it is judged against; a difference is bad input unless allow_config_mismatch,
in which case the differences are returned as notes and printed with the verdicts.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.core.errors import BadInput
from bench.report import baseline as bl
from bench.report import identity, stats
from bench.report.rules import (LOWER_IS_BAD, TESTS, Rule, as_rules, default_rules_path,  # noqa: F401
                                load_rules, rule_ks)
from bench.report.runs import Run, load_runs, match_metrics

ALPHA = 0.05
DEFAULT_TEST = "noninferiority"


@dataclass
class Verdict:
    rule: Rule
    variant: str
    metric: str
    baseline_variant: str | None = None
    n_base: int = 0
    n_cand: int = 0
    base_mean: float = math.nan
    cand_mean: float = math.nan
    limit: float = math.nan
    method: str = ""
    p_value: float | None = None
    outcome: str = "pass"            # pass | regression | inconclusive
    detail: str = ""
    half_width: float = math.nan     # Δ ± half_width: the (1 − 2α) interval of the difference
    tolerance: float = math.nan      # |baseline mean − limit mean|, in the metric's units
    min_detectable: float = math.nan  # drop (or increase) flagged with 80% power at these seeds
    paired: bool = False             # judged by the paired test on same-seed differences
    seeds_needed: int | None = None  # inconclusive: seeds per side that would decide it
    values: dict = field(default_factory=dict)  # per-seed values, for debugging a verdict

    @property
    def regression(self) -> bool:
        return self.outcome == "regression"

    @property
    def inconclusive(self) -> bool:
        return self.outcome == "inconclusive"

    @property
    def delta(self) -> float:
        return self.cand_mean - self.base_mean


class GateResult(list):
    """The verdicts (a list, as before) plus `notes`: config differences accepted by the caller."""

    def __init__(self, verdicts=(), notes=()):
        super().__init__(verdicts)
        self.notes = list(notes)


# --- inputs -------------------------------------------------------------------------------------
def _rules_for(rules, runs) -> list[Rule]:
    if rules is None:
        recipes = sorted({r.recipe for r in runs})
        if len(recipes) != 1:
            raise BadInput(f"runs mix recipes {', '.join(recipes)}; pass --rules FILE")
        rules = default_rules_path(recipes[0])
    return as_rules(rules)


def _as_record(x, ks) -> dict:
    """A baseline given as a dict, a baseline JSON file, or run dirs / sweep dirs / globs."""
    if isinstance(x, dict):
        return x
    items = [x] if isinstance(x, (str, Path)) else list(x)
    if all(isinstance(i, Run) for i in items):
        return bl.record_runs(items, ks)
    if len(items) == 1 and (Path(items[0]).is_file() or str(items[0]).endswith(".json")):
        return bl.load(items[0])
    return bl.record_runs(load_runs(items), ks)


def _known(records, sources) -> list[str]:
    return sorted(set().union(*(bl.names(v, s) for s in sources for rec in records for v in rec["variants"].values())))


def _resolve(rule: Rule, records) -> tuple[str, list[str]]:
    """The rule's source (given, else the first of evals/metrics/summary logging a match) and
    the concrete metric names its glob matches."""
    source = rule.source or next((s for s in ("evals", "metrics", "summary")
                                  if match_metrics(rule.metric, _known(records, [s]))), "metrics")
    if source == "events":
        return source, [rule.metric or "*"]
    found = match_metrics(rule.metric, _known(records, [source]))
    if not found:
        known = _known(records, [rule.source] if rule.source else ["evals", "metrics", "summary"])
        close = difflib.get_close_matches(rule.metric, known, n=5, cutoff=0.5) or known[:8]
        raise BadInput(f"{rule.where}: metric {rule.metric!r} was logged by no run"
                       f"{f' in {rule.source}' if rule.source else ''}; valid: {', '.join(close) or 'none'}")
    return source, found


def _match_variant(name: str, cand: dict, base: dict, forced: str | None) -> str:
    vs = base["variants"]
    if forced is not None:
        if forced not in vs:
            raise BadInput(f"unknown baseline variant {forced!r}; valid: {', '.join(map(repr, vs))}")
        return forced
    same = [n for n, v in vs.items() if v["label"] == cand["label"]]
    refs = [n for n, v in vs.items() if v.get("reference")]
    pick = [name] if name in vs else same or refs or (list(vs) if len(vs) == 1 else [])
    if not pick:
        raise BadInput(f"no baseline variant for {name!r}; valid: {', '.join(map(repr, vs))} "
                       f"(or pass --baseline-variant)")
    return pick[0]


def config_notes(base: dict, cand: dict, pairs: dict[str, str], allow: bool) -> list[str]:
    """One note per candidate variant whose defining config differs from its baseline variant's;
    BadInput (one line listing every difference: the user must see each key to fix) unless `allow`.
    `device` is compared as the device the runs used (identity.resolved)."""
    notes = []
    for cname, bname in pairs.items():
        bv, cv = base["variants"][bname], cand["variants"][cname]
        if bv.get("config") is None:
            notes.append(f"baseline variant {bname!r} records no config (old baseline): not checked")
            continue
        diff, one_sided = identity.differences(identity.resolved(bv), identity.resolved(cv),
                                               with_precision=bv["label"] == cv["label"])
        if one_sided:
            notes.append(f"{cname!r} vs baseline {bname!r}: keys set on one side only (not compared): "
                         f"{', '.join(one_sided)}")
        if not diff:
            continue
        if not allow:
            raise BadInput(f"{cname!r} was not run like baseline {bname!r}: {'; '.join(diff)}; rerun with the "
                           f"baseline's config or pass --allow-config-mismatch")
        notes.append(f"config mismatch accepted: {cname!r} vs baseline {bname!r}: {'; '.join(diff)}")
    return notes


# --- judging ------------------------------------------------------------------------------------
def _limits(b: np.ndarray, bound: str, v: float) -> np.ndarray:
    return {"max_drop": b - v, "rel_drop": b - v * np.abs(b), "max_increase": b + v,
            "rel_increase": b + v * np.abs(b)}[bound]


def _judge_abs(out: Verdict, rule: Rule, c: np.ndarray) -> Verdict:
    lower_bad = rule.bound in LOWER_IS_BAD
    worse = np.less if lower_bad else np.greater
    bad = ~np.isfinite(c) | worse(c, rule.value)
    out.limit, out.method = rule.value, "bound, every seed"
    out.outcome = "regression" if bad.any() else "pass"
    worst = np.nan if (~np.isfinite(c)).any() else (c.min() if lower_bad else c.max())
    n = int(bad.sum())
    out.detail = f"worst seed {_f(float(worst))}" + (f"; {n} of {len(c)} seeds outside the bound" if n else "")
    return out


def _judge(rule: Rule, metric: str, source: str, vname: str, cand: dict, bname: str | None,
           base: dict, alpha: float, test: str, pair: bool = True) -> Verdict:
    shown = f"events/{rule.kind}" + (f" at {metric}" if metric != "*" else "") if source == "events" else metric
    out = Verdict(rule, vname, shown, bname)
    c = bl.values(cand, source, metric, rule.stat, rule.k, rule.higher, rule.kind)
    c = np.full(len(cand["runs"]), np.nan) if c is None else c  # never logged: every seed missing
    out.n_cand, out.cand_mean = len(c), float(np.mean(c))
    out.values["candidate"] = c.tolist()
    if rule.bound in ("abs_min", "abs_max"):
        return _judge_abs(out, rule, c)
    b = bl.values(base["variants"][bname], source, metric, rule.stat, rule.k, rule.higher, rule.kind)
    bseeds = [r.get("seed") for r in base["variants"][bname]["runs"]]
    if b is not None and len(bseeds) == len(b):
        bseeds = [sd for sd, x in zip(bseeds, b) if np.isfinite(x)]
    b = np.array([]) if b is None else b[np.isfinite(b)]
    if b.size == 0:
        raise BadInput(f"baseline variant {bname!r} has no finite value of {metric!r} ({rule.stat}); "
                       f"re-record the baseline from runs that log it")
    t = _limits(b, rule.bound, rule.value)
    out.n_base, out.base_mean, out.limit = len(b), float(b.mean()), float(t.mean())
    out.tolerance = abs(out.base_mean - out.limit)
    out.values["baseline"] = b.tolist()
    if not np.isfinite(c).all():
        out.method, out.outcome = "non-finite", "regression"
        out.detail = f"{int((~np.isfinite(c)).sum())} of {len(c)} seeds missing or non-finite"
        return out
    sign = 1.0 if rule.bound in LOWER_IS_BAD else -1.0
    # Same seeds on both sides: a paired test on the per-seed differences (stats.py), else Welch.
    pairs = stats.pair_by_seed(c, [r.get("seed") for r in cand["runs"]], t, bseeds) if pair else None
    d = stats.TESTS[rule.test or test](c, t, sign * (c.mean() - t.mean()), alpha,
                                       None if pairs is None else sign * pairs)
    out.paired = pairs is not None
    out.outcome, out.method, out.p_value, out.half_width = d.outcome, d.method, d.p_value, d.half_width
    out.seeds_needed = d.seeds_needed
    out.min_detectable = stats.min_detectable(out.tolerance, d.se, d.df, alpha)
    if d.outcome == "inconclusive":
        out.detail = (f"need {d.seeds_needed} seeds per side" if d.seeds_needed else
                      "need more seeds" if math.isfinite(d.half_width) else "need ≥ 2 seeds per side")
    return out


def _status_verdict(rule: Rule, vname: str, cand: dict) -> Verdict:
    bad = [f"{r['run_name']}={r['status']}" for r in cand["runs"] if r["status"] not in rule.allowed]
    return Verdict(rule, vname, "status", n_cand=len(cand["runs"]), method="status",
                   outcome="regression" if bad else "pass",
                   detail=", ".join(bad) or ", ".join(sorted({r["status"] for r in cand["runs"]})))


def gate(baseline, rules, runs, alpha: float = ALPHA, baseline_variant: str | None = None,
         test: str = DEFAULT_TEST, allow_config_mismatch: bool = False, pair: bool = True) -> GateResult:
    """Verdicts for every rule x candidate variant (x metric, for globs). `baseline`: a baseline
    dict, a baseline JSON path, or run dirs; `rules`: Rules, a rules path, or None for
    conf/gate/<recipe>.yaml; `runs`: Runs or run dir paths; `test`: noninferiority | welch, for
    rules that do not name their own; `pair`: compare same-seed runs paired (stats.py; False:
    always unpaired Welch, `fp8bench gate --unpaired`)."""
    if test not in TESTS:
        raise BadInput(f"unknown test {test!r}; valid: {', '.join(TESTS)}")
    runs = runs if runs and all(isinstance(r, Run) for r in runs) else load_runs(runs)
    rules = _rules_for(rules, runs)
    ks = rule_ks(rules)
    base = _as_record(baseline, ks)
    cand = bl.record_runs(runs, ks)
    if base.get("recipe") not in {r.recipe for r in runs}:
        raise BadInput(f"baseline is of recipe {base.get('recipe')!r}, runs are {sorted({r.recipe for r in runs})}")
    relative = any(r.bound and not r.bound.startswith("abs_") for r in rules if not r.check)
    pairs = {n: _match_variant(n, v, base, baseline_variant) for n, v in cand["variants"].items()} if relative else {}
    notes = config_notes(base, cand, pairs, allow_config_mismatch)
    verdicts = []
    for rule in rules:
        if rule.check:
            verdicts += [_status_verdict(rule, n, v) for n, v in cand["variants"].items()]
            continue
        source, metrics = _resolve(rule, [base, cand])
        for vname, cv in cand["variants"].items():
            bname = None if rule.bound.startswith("abs_") else pairs[vname]
            verdicts += [_judge(rule, m, source, vname, cv, bname, base, alpha, test, pair) for m in metrics]
    return GateResult(verdicts, notes)


def _f(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"
