"""Gate rules: the YAML schema of conf/gate/<recipe>.yaml, parsed and validated in one place.

Split from gate.py so that baseline.py (which records the mean_last_k windows the rules ask for)
and gate.py (which judges them) both import this module and neither imports the other.

A rule is a mapping (see conf/gate/pretrain.yaml for commented examples):
  metric            exact name or fnmatch glob; for event_count a glob on the event's `where`
  stat              final | best | mean_last_k (with k) | median | max | min | event_count
  source            metrics | evals | events | summary (inferred when omitted)
  bound, value      abs_min | abs_max (hard limits, every seed) or max_drop | rel_drop |
                    max_increase | rel_increase (tolerances relative to the baseline)
  test              noninferiority (default) | welch: how a relative bound is judged (gate.py)
  higher_is_better  picks max or min for `best` (default: by the metric's name)
  kind              the event kind, for event_count
or a status check: {check: run_status, allowed: [completed, ...]}.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.core.errors import BadInput
from bench.core.events import KINDS
from bench.report.runs import STATUSES

DEFAULT_K = 5
# The statistical tests a relative bound can be judged by (gate.py's docstring derives them).
TESTS = ("noninferiority", "welch")

STATS = ("final", "best", "mean_last_k", "median", "max", "min", "event_count")
SOURCES = ("metrics", "evals", "events", "summary")
BOUNDS = ("abs_min", "abs_max", "rel_drop", "max_drop", "max_increase", "rel_increase")
CHECKS = ("run_status",)
RULE_KEYS = ("name", "metric", "stat", "source", "bound", "value", "k", "kind", "higher_is_better", "check",
             "allowed", "test")
LOWER_IS_BAD = {"abs_min", "rel_drop", "max_drop"}  # bounds where a lower value is worse
# conf/ ships with the package (pyproject.toml installs it next to bench/ and recipes/), so this
# path is the repo's conf/gate in a checkout and site-packages/conf/gate in a wheel install.
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
    k: int = DEFAULT_K
    kind: str | None = None
    higher: bool | None = None
    check: str | None = None
    allowed: tuple = ("completed",)
    where: str = "rules"  # "<file> rule <n>", for error messages
    test: str | None = None  # None: the gate's default test

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
        _choice(where, "event kind", r.kind, KINDS)
    elif not isinstance(r.metric, str) or not r.metric:
        raise BadInput(f"{where}: missing `metric` (a metric name or glob such as eval/*/accuracy)")
    try:
        r.value = float(spec["value"])
        r.k = int(spec.get("k", DEFAULT_K))
    except KeyError:
        raise BadInput(f"{where}: missing `value` (the tolerance or limit, a number)") from None
    except (TypeError, ValueError):
        raise BadInput(f"{where}: value {spec.get('value')!r} and k {spec.get('k')!r} must be numbers") from None
    if not math.isfinite(r.value) or r.k < 1:
        raise BadInput(f"{where}: value must be finite and k a positive integer")
    r.test = spec.get("test")
    if r.test is not None:
        _choice(where, "test", r.test, TESTS)
    if r.higher is not None and not isinstance(r.higher, bool):
        raise BadInput(f"{where}: higher_is_better {r.higher!r}; valid: true, false")
    return r


def rule_ks(rules) -> set[int]:
    """The mean_last_k windows a list of rules asks for (a baseline must record each)."""
    return {r.k for r in rules or () if r.stat == "mean_last_k"}


def as_rules(rules) -> list[Rule]:
    """Parsed rules from Rules, a rules file path or a loaded mapping."""
    if isinstance(rules, list) and all(isinstance(r, Rule) for r in rules):
        return rules
    return load_rules(rules)
