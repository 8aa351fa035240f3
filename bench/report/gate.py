"""Precision gate: compare candidate runs with a baseline under YAML rules; exit 0 / 1 / 2.

Rules (conf/gate/<recipe>.yaml):
  rules:
    - metric: eval/*/accuracy   # exact name or glob; for event_count a glob on the event's `where`
      stat: final               # final | best | mean_last_k (k: 5) | median | max | min | event_count
      source: evals             # metrics | evals | events | summary (inferred when omitted)
      bound: max_drop           # abs_min | abs_max | rel_drop | max_drop | max_increase | rel_increase
      value: 0.05
      higher_is_better: true    # picks max or min for `best` (default: by the metric's name)
    - check: run_status         # every candidate run must have ended in an allowed status
      allowed: [completed]

Statistics. Each seed gives one value of the rule's statistic; a variant is its seeds. For a
relative bound the baseline seeds b_i become limit values t_i: b_i - v (max_drop),
b_i - v|b_i| (rel_drop), b_i + v (max_increase), b_i + v|b_i| (rel_increase).
  * >= 2 seeds on both sides: a regression is flagged only when the candidate mean is worse than
    the limit mean with confidence, i.e. a one-sided Welch t-test (scipy.stats.ttest_ind,
    equal_var=False; H0: candidate at least as good as the limit) rejects at level alpha (0.05).
    Same-distribution reruns therefore alarm at most alpha of the time, less with a tolerance.
    With zero spread on both sides (e.g. event counts all equal) the test is undefined and the
    means are compared directly.
  * one seed on either side: plain comparison of the means with the limit, no test.
  * absolute bounds (abs_min / abs_max) are hard limits that every seed must meet: one NaN run
    out of three is a failure, not noise.
A candidate seed whose value is missing or non-finite (a diverged run) is always a regression.
"""
from __future__ import annotations

import difflib
import math
import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from scipy import stats as sps

from bench.errors import BadInput
from bench.report import baseline as bl
from bench.report.runs import EVENT_KINDS, STATUSES, Run, load_runs, match_metrics

STATS = ("final", "best", "mean_last_k", "median", "max", "min", "event_count")
SOURCES = ("metrics", "evals", "events", "summary")
BOUNDS = ("abs_min", "abs_max", "rel_drop", "max_drop", "max_increase", "rel_increase")
CHECKS = ("run_status",)
RULE_KEYS = ("name", "metric", "stat", "source", "bound", "value", "k", "kind", "higher_is_better", "check", "allowed")
ALPHA = 0.05
_LOWER_IS_BAD = {"abs_min", "rel_drop", "max_drop"}
_CONF = Path(__file__).resolve().parents[2] / "conf" / "gate"


@dataclass
class Rule:
    spec: dict
    index: int
    metric: str | None = None
    stat: str = "final"
    source: str | None = None
    bound: str | None = None
    value: float = 0.0
    k: int = bl.DEFAULT_K
    kind: str | None = None
    higher: bool | None = None
    check: str | None = None
    allowed: tuple = ("completed",)
    where: str = "rules"  # "<file> rule <n>", for error messages

    @property
    def label(self) -> str:
        if self.spec.get("name"):
            return str(self.spec["name"])
        if self.check:
            return f"{self.check} in {list(self.allowed)}"
        stat = f"mean_last_{self.k}" if self.stat == "mean_last_k" else self.stat
        what = f"{self.kind} events" + (f" at {self.metric}" if self.metric not in (None, "*") else "") \
            if self.stat == "event_count" else f"{self.metric} {stat}"
        return f"{what} {self.bound} {self.value:g}"


def default_rules_path(recipe: str) -> Path:
    path = _CONF / f"{recipe}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in _CONF.glob("*.yaml"))
        raise BadInput(f"no default gate rules for recipe {recipe!r}; valid: {', '.join(valid)} "
                       f"(or pass --rules FILE)")
    return path


def _choice(where: str, key: str, v, valid) -> None:
    if v is None:
        raise BadInput(f"{where}: missing `{key}`; valid: {', '.join(map(str, valid))}")
    if v not in valid:
        raise BadInput(f"{where}: unknown {key} {v!r}; valid: {', '.join(map(str, valid))}")


def load_rules(src) -> list[Rule]:
    """Parse and validate a rules file (or an already loaded mapping)."""
    if isinstance(src, (str, Path)):
        where = str(src)
        try:
            data = yaml.safe_load(Path(src).read_text())
        except OSError as e:
            raise BadInput(f"cannot read rules file {src}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise BadInput(f"malformed YAML in rules file {src}: {' '.join(str(e).split())}") from None
    else:
        where, data = "rules", src
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list) or not data["rules"]:
        raise BadInput(f"{where}: expected a mapping with a non-empty `rules:` list")
    return [_parse_rule(spec, i, f"{where} rule {i + 1}") for i, spec in enumerate(data["rules"])]


def _parse_rule(spec, i: int, where: str) -> Rule:
    if not isinstance(spec, dict):
        raise BadInput(f"{where}: expected a mapping, got {spec!r}")
    for key in spec:
        _choice(where, "key", key, RULE_KEYS)
    if "check" in spec:
        _choice(where, "check", spec["check"], CHECKS)
        allowed = spec.get("allowed", ["completed"])
        allowed = [allowed] if isinstance(allowed, str) else allowed
        for s in allowed:
            _choice(where, "status", s, STATUSES)
        return Rule(dict(spec), i, check=spec["check"], allowed=tuple(allowed), where=where)
    r = Rule(dict(spec), i, where=where, metric=spec.get("metric"), stat=spec.get("stat", "final"),
             source=spec.get("source"), bound=spec.get("bound"), kind=spec.get("kind"),
             higher=spec.get("higher_is_better"))
    _choice(where, "stat", r.stat, STATS)
    _choice(where, "bound", r.bound, BOUNDS)
    if r.source is not None:
        _choice(where, "source", r.source, SOURCES)
    if r.source == "summary":  # summary.json holds only final and best values
        _choice(where, "stat for source summary", r.stat, ("final", "best"))
    if r.stat == "event_count" or r.source == "events":
        r.stat, r.source = "event_count", "events"
        _choice(where, "event kind", r.kind, EVENT_KINDS)
    elif not isinstance(r.metric, str) or not r.metric:
        raise BadInput(f"{where}: missing `metric` (a metric name or glob such as eval/*/accuracy)")
    try:
        r.value = float(spec["value"])
        r.k = int(spec.get("k", bl.DEFAULT_K))
    except KeyError:
        raise BadInput(f"{where}: missing `value` (the tolerance or limit, a number)") from None
    except (TypeError, ValueError):
        raise BadInput(f"{where}: value {spec.get('value')!r} and k {spec.get('k')!r} must be numbers") from None
    if not math.isfinite(r.value) or r.k < 1:
        raise BadInput(f"{where}: value must be finite and k a positive integer")
    if r.higher is not None and not isinstance(r.higher, bool):
        raise BadInput(f"{where}: higher_is_better {r.higher!r}; valid: true, false")
    return r


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
    regression: bool = False
    detail: str = ""
    values: dict = field(default_factory=dict)  # per-seed values, for debugging a verdict


# --- inputs -------------------------------------------------------------------------------------
def _as_rules(rules, runs) -> list[Rule]:
    if rules is None:
        recipes = sorted({r.recipe for r in runs})
        if len(recipes) != 1:
            raise BadInput(f"runs mix recipes {', '.join(recipes)}; pass --rules FILE")
        rules = default_rules_path(recipes[0])
    return rules if isinstance(rules, list) and all(isinstance(r, Rule) for r in rules) else load_rules(rules)


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


# --- judging ------------------------------------------------------------------------------------
def _limits(b: np.ndarray, bound: str, v: float) -> np.ndarray:
    return {"max_drop": b - v, "rel_drop": b - v * np.abs(b), "max_increase": b + v,
            "rel_increase": b + v * np.abs(b)}[bound]


def _judge(rule: Rule, metric: str, source: str, vname: str, cand: dict, bname: str | None,
           base: dict, alpha: float) -> Verdict:
    shown = f"events/{rule.kind}" + (f" at {metric}" if metric != "*" else "") if source == "events" else metric
    out = Verdict(rule, vname, shown, bname)
    c = bl.values(cand, source, metric, rule.stat, rule.k, rule.higher, rule.kind)
    c = np.full(len(cand["runs"]), np.nan) if c is None else c  # never logged: every seed missing
    out.n_cand, out.cand_mean = len(c), float(np.mean(c))
    out.values["candidate"] = c.tolist()
    lower_bad = rule.bound in _LOWER_IS_BAD
    worse = np.less if lower_bad else np.greater
    bad = ~np.isfinite(c)
    if rule.bound in ("abs_min", "abs_max"):
        out.limit, out.method = rule.value, "bound, every seed"
        out.regression = bool(bad.any() or worse(c, rule.value).any())
        n = int((bad | worse(c, rule.value)).sum())
        worst = np.nan if bad.any() else (c.min() if lower_bad else c.max())
        out.detail = f"worst seed {_f(float(worst))}" + (f"; {n} of {len(c)} seeds outside the bound" if n else "")
        return out
    b = bl.values(base["variants"][bname], source, metric, rule.stat, rule.k, rule.higher, rule.kind)
    b = np.array([]) if b is None else b[np.isfinite(b)]
    if b.size == 0:
        raise BadInput(f"baseline variant {bname!r} has no finite value of {metric!r} ({rule.stat}); "
                       f"re-record the baseline from runs that log it")
    t = _limits(b, rule.bound, rule.value)
    out.n_base, out.base_mean, out.limit = len(b), float(b.mean()), float(t.mean())
    out.values["baseline"] = b.tolist()
    if bad.any():
        out.method, out.regression = "non-finite", True
        out.detail = f"{int(bad.sum())} of {len(c)} seeds missing or non-finite"
    elif len(c) >= 2 and len(t) >= 2 and (np.var(c) > 0 or np.var(t) > 0):
        # H0: candidate no worse than the tolerance-shifted baseline; reject only with confidence.
        res = sps.ttest_ind(c, t, equal_var=False, alternative="less" if lower_bad else "greater")
        out.p_value = float(res.pvalue)
        out.method = f"Welch t one-sided, α={alpha:g}"
        out.regression = out.p_value < alpha
    else:
        out.method = "tolerance (1 seed)" if min(len(c), len(t)) < 2 else "tolerance (no spread)"
        out.regression = bool(worse(c.mean(), t.mean()))
    return out


def _status_verdict(rule: Rule, vname: str, cand: dict) -> Verdict:
    bad = [f"{r['run_name']}={r['status']}" for r in cand["runs"] if r["status"] not in rule.allowed]
    return Verdict(rule, vname, "status", n_cand=len(cand["runs"]), method="status", regression=bool(bad),
                   detail=", ".join(bad) or ", ".join(sorted({r["status"] for r in cand["runs"]})))


def gate(baseline, rules, runs, alpha: float = ALPHA, baseline_variant: str | None = None) -> list[Verdict]:
    """Verdicts for every rule x candidate variant (x metric, for globs). `baseline`: a baseline
    dict, a baseline JSON path, or run dirs; `rules`: Rules, a rules path, or None for
    conf/gate/<recipe>.yaml; `runs`: Runs or run dir paths."""
    runs = runs if runs and all(isinstance(r, Run) for r in runs) else load_runs(runs)
    rules = _as_rules(rules, runs)
    ks = bl.rule_ks(rules)
    base = _as_record(baseline, ks)
    cand = bl.record_runs(runs, ks)
    if base.get("recipe") not in {r.recipe for r in runs}:
        raise BadInput(f"baseline is of recipe {base.get('recipe')!r}, runs are {sorted({r.recipe for r in runs})}")
    verdicts = []
    for rule in rules:
        if rule.check:
            verdicts += [_status_verdict(rule, n, v) for n, v in cand["variants"].items()]
            continue
        source, metrics = _resolve(rule, [base, cand])
        for vname, cv in cand["variants"].items():
            bname = None if rule.bound.startswith("abs_") else _match_variant(vname, cv, base, baseline_variant)
            verdicts += [_judge(rule, m, source, vname, cv, bname, base, alpha) for m in metrics]
    return verdicts


# --- outputs ------------------------------------------------------------------------------------
def _f(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


COLUMNS = ("verdict", "variant", "rule", "metric", "baseline", "candidate", "Δ", "limit", "test", "p", "note")


def rows(verdicts: list[Verdict]) -> list[list[str]]:
    return [["REGRESSION" if v.regression else "pass", v.variant, v.rule.label, v.metric,
             f"{_f(v.base_mean)} (n={v.n_base}, {v.baseline_variant})" if v.baseline_variant else "—",
             f"{_f(v.cand_mean)} (n={v.n_cand})", _f(v.cand_mean - v.base_mean) if v.baseline_variant else "—",
             _f(v.limit), v.method, _f(v.p_value), v.detail] for v in verdicts]


def method_note(alpha: float) -> str:
    return (f"Test: with ≥ 2 seeds on both sides, a one-sided Welch t-test (scipy.stats.ttest_ind, "
            f"equal_var=False) at level α = {alpha:g} of the candidate against the baseline shifted by the "
            f"tolerance; with 1 seed, a plain tolerance comparison; abs_min/abs_max bounds hold for every seed.")


def headline(verdicts: list[Verdict]) -> str:
    n = sum(v.regression for v in verdicts)
    return f"precision gate: {'FAIL' if n else 'PASS'} ({n} regression{'s' * (n != 1)} in {len(verdicts)} checks)"


def print_table(verdicts: list[Verdict], alpha: float = ALPHA) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=headline(verdicts), caption=method_note(alpha), caption_justify="left")
    for col in COLUMNS:
        table.add_column(col, overflow="fold")
    for row in rows(verdicts):
        table.add_row(*row, style="bold red" if row[0] != "pass" else None)
    # rich sizes to the terminal or $COLUMNS; a CI log has neither and would get 80 characters
    Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200).print(table)


def markdown(verdicts: list[Verdict], alpha: float = ALPHA) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731  (pipes in metric globs break md tables)
    lines = [f"## fp8bench {headline(verdicts)}", "", method_note(alpha), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows(verdicts)]
    return "\n".join(lines) + "\n"


def junit(verdicts: list[Verdict], alpha: float = ALPHA) -> ET.ElementTree:
    """One <testcase> per rule x variant (a glob rule's metrics share it); <failure> on regression."""
    cases: dict[tuple, list[Verdict]] = {}
    for v in verdicts:
        cases.setdefault((v.rule.index, v.variant), []).append(v)
    fails = sum(any(v.regression for v in vs) for vs in cases.values())
    suite = ET.Element("testsuite", name="fp8bench.gate", tests=str(len(cases)), failures=str(fails),
                       errors="0", skipped="0")
    ET.SubElement(ET.SubElement(suite, "properties"), "property", name="test", value=method_note(alpha))
    for (_, variant), vs in cases.items():
        case = ET.SubElement(suite, "testcase", classname=f"gate.{variant}", name=vs[0].rule.label)
        text = "\n".join(" | ".join(r) for r in rows(vs))
        bad = [v for v in vs if v.regression]
        if bad:
            msg = "; ".join(f"runs not in {list(v.rule.allowed)}: {v.detail}" if v.rule.check else
                            f"{v.metric}: {_f(v.cand_mean)} vs limit {_f(v.limit)} ({v.method}"
                            f"{', p=' + _f(v.p_value) if v.p_value is not None else ''}) {v.detail}".strip()
                            for v in bad)
            ET.SubElement(case, "failure", message=msg, type="regression").text = text
        ET.SubElement(case, "system-out").text = text
    tree = ET.ElementTree(ET.Element("testsuites"))
    tree.getroot().append(suite)
    ET.indent(tree)
    return tree


def write_outputs(verdicts, alpha=ALPHA, junit_path=None, markdown_path=None) -> None:
    """Table on stdout; markdown to a file and appended to $GITHUB_STEP_SUMMARY; JUnit XML."""
    print_table(verdicts, alpha)
    md = markdown(verdicts, alpha)
    for path in filter(None, (markdown_path, junit_path)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    if markdown_path:
        Path(markdown_path).write_text(md)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as f:
            f.write(md + "\n")
    if junit_path:
        junit(verdicts, alpha).write(junit_path, encoding="utf-8", xml_declaration=True)


def exit_code(verdicts: list[Verdict]) -> int:
    return 1 if any(v.regression for v in verdicts) else 0

