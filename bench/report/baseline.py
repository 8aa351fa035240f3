"""Baselines: per-seed statistics of a set of runs, stored so a gate never needs those runs again.

`record(run_dirs, rules)` keeps, for every variant, every seed's value of every statistic a gate
rule can ask for: final / max / min / median / mean of the last k values of every numeric metric
in metrics.jsonl and evals.jsonl, summary.json's final/best values, and per-seed event counts by
kind and location (so `event_count` with a `where` glob sums exactly as on the run dirs). `best`
is max or min by the metric's direction, so it is derived rather than stored. Values stay per
seed, not averaged: the gate's Welch test needs each side's spread, not just its mean.

The gate computes candidate statistics with the very same `record_runs`, so a gate against a
baseline file and a gate against the run dirs it was recorded from agree exactly.

Only completed runs make a baseline: a run without summary.json (crashed, or still running) or
one that diverged / failed / was preempted is refused with one line (BadInput, exit 2).

File layout (JSON; non-finite and missing values are null). Format 2 adds each variant's
`defining` config (identity.py: what the gate checks candidates against); format 1 files load
too, the gate then derives the defining keys from the variant's `config`:
  {"format": "fp8bench-baseline/2", "created": ISO time, "recipe": str, "mean_last_k": [5, ...],
   "rules": [...] | null, "config": {...}, "versions": {...}, "device": str,
   "variants": {name: {"label": str, "reference": bool, "config": {...}, "defining": {key: json},
                       "runs": [{"run_dir", "run_name", "seed", "status", "device", "versions",
                                 "steps_completed"}],
                       "metrics": {metric: {stat: [per seed]}}, "evals": {...},
                       "summary": {metric: {"final": [...], "best": [...]}},
                       "events": {kind: [{where: count} per seed]}}}}
"""
from __future__ import annotations

import datetime as _dt
import fnmatch
import json
from collections import Counter
from pathlib import Path

import numpy as np

from bench.core import atomic
from bench.core.errors import BadInput
from bench.report import identity
from bench.report.rules import DEFAULT_K, as_rules, rule_ks
from bench.report.runs import Run, finite, group, higher_is_better, load_runs

FORMAT = "fp8bench-baseline/2"
READABLE = ("fp8bench-baseline/1", FORMAT)
SERIES_STATS = ("final", "best", "max", "min", "median", "mean_last_k")


def _clean(x):
    return float(x) if finite(x) else None


def series_stats(values: np.ndarray, ks) -> dict[str, float | None]:
    """Statistics of one run's series. `final` and `mean_last_k` keep NaN (a run that ended
    non-finite must not look healthy); max/min/median ignore NaN steps."""
    if values.size == 0:
        return {}
    ok = values[np.isfinite(values)]
    out = {"final": _clean(values[-1])}
    for name, fn in (("max", np.max), ("min", np.min), ("median", np.median)):
        out[name] = _clean(fn(ok)) if ok.size else None
    for k in ks:
        out[f"mean_last_{k}"] = _clean(np.mean(values[-k:]))
    return out


def _run_values(run: Run, ks) -> dict:
    out = {}
    for source in ("metrics", "evals"):
        out[source] = {m: series_stats(run.series(source, m)[1], ks) for m in sorted(run.names(source))}
    s = run.summary or {}
    summ = {}
    for m in sorted(run.names("summary")):
        top = s.get(m) if finite(s.get(m)) else None
        summ[m] = {"final": _clean((s.get("final") or {}).get(m, top)),
                   "best": _clean((s.get("best") or {}).get(m, top))}
    out["summary"] = summ
    ev: dict[str, Counter] = {}
    for e in run.events:
        ev.setdefault(str(e.get("kind")), Counter())[str(e.get("where", ""))] += 1
    out["events"] = ev
    return out


def record_runs(runs: list[Run], ks=(DEFAULT_K,)) -> dict:
    """The baseline dict of already-loaded runs (see the module docstring for the layout)."""
    ks = sorted(set(ks) | {DEFAULT_K})
    variants = {}
    for name, var in group(runs).items():
        per_run = [_run_values(r, ks) for r in var.runs]
        v = {"label": var.label, "reference": var.reference, "config": var.runs[0].config,
             "runs": [{"run_dir": str(r.path), "run_name": r.run_name, "seed": r.seed, "status": r.status,
                       "device": (r.summary or {}).get("device"), "versions": (r.summary or {}).get("versions"),
                       "steps_completed": (r.summary or {}).get("steps_completed")} for r in var.runs]}
        v["defining"] = identity.defining(identity.resolved(v))  # device: the one the runs used
        for source in ("metrics", "evals", "summary"):
            names = sorted({m for pr in per_run for m in pr[source]})
            stats = sorted({st for pr in per_run for m in pr[source].values() for st in m})
            # one value per seed, aligned with v["runs"]; null where a seed never logged it
            v[source] = {m: {st: [pr[source].get(m, {}).get(st) for pr in per_run] for st in stats}
                         for m in names}
        kinds = sorted({k for pr in per_run for k in pr["events"]})
        v["events"] = {k: [dict(pr["events"].get(k, {})) for pr in per_run] for k in kinds}
        variants[name] = v
    first = runs[0]
    return {"format": FORMAT, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "recipe": first.recipe, "mean_last_k": ks, "rules": None, "config": first.config,
            "versions": (first.summary or {}).get("versions"), "device": (first.summary or {}).get("device"),
            "variants": variants}


def record(run_dirs, rules=None) -> dict:
    """Baseline dict of the completed runs under `run_dirs` (dirs, sweep dirs, globs). `rules` (a
    rules file or parsed rules) adds any mean_last_k window they use besides the default k=5."""
    rules = None if rules is None else as_rules(rules)
    runs = load_runs(run_dirs)
    for r in runs:
        if r.summary is None:
            raise BadInput(f"run {r.path} has no summary.json (it crashed or is still running); a baseline "
                           f"needs completed runs: finish or rerun it, or leave it out")
        if r.status != "completed":
            raise BadInput(f"run {r.path} has status {r.status!r}; a baseline needs status 'completed'")
    out = record_runs(runs, rule_ks(rules))
    out["rules"] = [r.spec for r in rules] if rules else None
    return out


def write(baseline: dict, path) -> Path:
    """Atomic write (bench.core.atomic): a gate never reads half a file. A path that is a directory
    (or lies under a file) is BadInput."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"-o {path} is a directory; valid: a file path for the baseline JSON")
    try:
        return atomic.write_json(path, baseline, indent=1, sort_keys=True)
    except OSError as e:
        raise BadInput(f"cannot write baseline {path}: {e.strerror}") from None


def load(path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise BadInput(f"cannot read baseline {path}: {e.strerror}") from None
    except ValueError as e:
        raise BadInput(f"unreadable JSON in baseline {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or data.get("format") not in READABLE or not isinstance(data.get("variants"), dict):
        raise BadInput(f"{path} is not an fp8bench baseline (format {FORMAT}); record one with "
                       f"`fp8bench baseline record RUN_DIR... -o FILE`")
    return data


def names(variant: dict, source: str) -> set[str]:
    if source == "events":
        return set(variant.get("events", {}))
    return set(variant.get(source, {}))


def values(variant: dict, source: str, metric: str, stat: str, k: int = DEFAULT_K,
           higher: bool | None = None, kind: str | None = None) -> np.ndarray | None:
    """Per-seed values of one statistic (NaN where a seed lacks it); None when the variant never
    logged the metric at all. For events, `metric` is a glob on the event's `where`."""
    if source == "events":
        per_seed = variant.get("events", {}).get(kind) or [{} for _ in variant["runs"]]
        return np.array([sum(c for w, c in d.items() if fnmatch.fnmatchcase(w, metric or "*"))
                         for d in per_seed], dtype=float)
    entry = variant.get(source, {}).get(metric)
    if entry is None:
        return None
    if stat == "best":
        if source != "summary":
            stat = "max" if (higher_is_better(metric) if higher is None else higher) else "min"
    elif stat == "mean_last_k":
        stat = f"mean_last_{k}"
    elif source == "summary" and stat != "final":
        raise BadInput(f"stat {stat!r} is not available for source summary; valid: final, best")
    if stat not in entry:
        raise BadInput(f"baseline has no {stat} for {metric!r}; re-record it with "
                       f"`fp8bench baseline record --rules RULES ...`")
    return np.array([np.nan if v is None else v for v in entry[stat]], dtype=float)
