"""Load run directories (DESIGN.md §4) and group them into variants.

A run dir is any folder holding config.yaml and metrics.jsonl; a Hydra multirun sweep dir holds
them in subfolders at any depth. summary.json may be missing (a run killed before it wrote one):
such a run is kept, with status "unknown", never dropped. Anything unreadable is BadInput naming
the file (and line), so the CLI prints one line and exits 2.

Variants: runs that differ only by seed are repeats of one experiment. A run's variant is its
precision label (pretrain: `precision.name`; GRPO: `trainer/generator`, plus `is=<mode>` unless
the IS correction is `none`) plus every other config key that differs across the runs given,
except the per-run bookkeeping keys in EXCLUDED.
"""
from __future__ import annotations

import fnmatch
import glob
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from bench.core.errors import BadInput

STATUSES = ("running", "completed", "diverged", "failed", "preempted", "unknown")
# Per-run bookkeeping: differs between repeats of the same experiment, never defines a variant.
# logger/wandb_id only choose where logs go; resume only says how the run was (re)started.
EXCLUDED = ("seed", "run_name", "run_dir", "sweep", "resume", "wandb_id", "logger")
# Config groups whose identity is the precision label itself.
LABEL_GROUPS = ("precision", "trainer_precision", "generator_precision", "is_correction")
_HIGHER_BETTER = re.compile(r"accuracy|reward|/ess$|sqnr|tokens_per_s|pearson")


def higher_is_better(metric: str) -> bool:
    """Direction of a metric by its DESIGN §6 name: accuracy, reward, ESS, SQNR, throughput and
    correlation go up when things get better; losses, errors, KLs, norms, fractions go down."""
    return bool(_HIGHER_BETTER.search(metric))


@dataclass
class Run:
    path: Path
    config: dict
    metrics: list[dict]
    evals: list[dict]
    events: list[dict]
    summary: dict | None  # None: summary.json missing (crashed before writing it)

    @property
    def recipe(self) -> str:
        return str(self.config.get("recipe") or (self.summary or {}).get("recipe") or "unknown")

    @property
    def run_name(self) -> str:
        return str(self.config.get("run_name") or self.path.name)

    @property
    def seed(self):
        return self.config.get("seed")

    @property
    def status(self) -> str:
        return str((self.summary or {}).get("status") or "unknown")

    @property
    def label(self) -> str:
        """Precision label: `bf16` (pretrain) or `bf16/fp8_blockwise is=tis` (GRPO)."""
        return precision_label(self.config)

    def series(self, source: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one metric from metrics.jsonl or evals.jsonl; null (a NaN the
        writer could not store as JSON) becomes NaN so a diverged tail stays visible."""
        rows = self.metrics if source == "metrics" else self.evals
        pts = [(r.get("step", i), r[metric]) for i, r in enumerate(rows)
               if metric in r and (r[metric] is None or _is_num(r[metric]))]
        steps = np.array([p[0] for p in pts], dtype=float)
        vals = np.array([np.nan if p[1] is None else p[1] for p in pts], dtype=float)
        return steps, vals

    def names(self, source: str) -> set[str]:
        """Numeric metric names logged in a source (metrics | evals | summary)."""
        if source == "summary":
            s = self.summary or {}
            out = {k for k, v in s.items() if _is_num(v)}
            return out | set(s.get("final") or {}) | set(s.get("best") or {})
        rows = self.metrics if source == "metrics" else self.evals
        return {k for r in rows for k, v in r.items() if k != "step" and (v is None or _is_num(v))}


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def precision_label(cfg: dict) -> str:
    if "trainer_precision" in cfg or "generator_precision" in cfg:
        t = (cfg.get("trainer_precision") or {}).get("name", "?")
        g = (cfg.get("generator_precision") or {}).get("name", "?")
        label = f"{t}/{g}"
    else:
        label = str((cfg.get("precision") or {}).get("name", "?"))
    if synthetic := synthetic_label(cfg):
        label = f"{label} {synthetic}"
    mode = (cfg.get("is_correction") or {}).get("mode", "none")
    return label if mode in (None, "none") else f"{label} is={mode}"


def synthetic_label(cfg: dict) -> str:
    """`SYNTHETIC-perturb(<target>,σ=<sigma>)` for a run with generator.perturb on (the fault
    injection of bench/generation/perturb.py, named wherever it appears), else ''."""
    pc = (cfg.get("generator") or {}).get("perturb") or {}
    sigma = pc.get("sigma") or 0
    return f"SYNTHETIC-perturb({pc.get('target', 'logits')},σ={float(sigma):g})" if sigma > 0 else ""


def is_reference(cfg: dict) -> bool:
    """The natural baseline: every precision side bf16 and no IS correction."""
    sides = [cfg.get(k) for k in ("precision", "trainer_precision", "generator_precision") if cfg.get(k)]
    mode = (cfg.get("is_correction") or {}).get("mode", "none")
    return (bool(sides) and all(s.get("name") == "bf16" for s in sides) and mode in (None, "none")
            and not synthetic_label(cfg))


# --- discovery and parsing --------------------------------------------------------------------
def is_run_dir(p: Path) -> bool:
    return (p / "config.yaml").is_file() and (p / "metrics.jsonl").is_file()


def _natural(p: Path):
    # hydra job dirs are 0_..., 1_..., 10_...: sort numbers as numbers
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def discover(paths) -> list[Path]:
    """Run dirs under each path: a run dir itself, a sweep dir (searched at any depth), or a glob."""
    found: list[Path] = []
    for arg in paths:
        arg = str(arg)
        p = Path(arg)
        if p.exists():
            matches = [p]
        elif glob.has_magic(arg):
            matches = [Path(m) for m in sorted(glob.glob(arg, recursive=True))]
            if not matches:
                raise BadInput(f"no path matches {arg!r}; valid: run dirs, sweep dirs or globs of them")
        else:
            raise BadInput(f"run dir {arg!r} does not exist; valid: a run dir (config.yaml + metrics.jsonl), "
                           f"a sweep dir holding run dirs, or a glob")
        for m in matches:
            if is_run_dir(m):
                found.append(m)
            elif m.is_dir():
                found.extend(c.parent for c in m.rglob("config.yaml") if is_run_dir(c.parent))
    if not found:
        raise BadInput(f"no run dirs found in {' '.join(map(str, paths))}; a run dir holds config.yaml "
                       f"and metrics.jsonl")
    return sorted({f.resolve() for f in found}, key=_natural)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        text = path.read_text()
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror}") from None
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            # A crash can cut the last line mid-write (no trailing newline): that step is lost,
            # as DESIGN §4 allows. A bad line anywhere else is a corrupt file.
            if i == len(lines) and not text.endswith("\n"):
                break
            raise BadInput(f"unreadable JSON in {path} line {i}: {str(e).splitlines()[0]}") from None
        rows.append(row)
    return rows


def load_run(path) -> Run:
    path = Path(path)
    if not is_run_dir(path):
        raise BadInput(f"{path} is not a run dir; valid: a folder holding config.yaml and metrics.jsonl")
    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as e:
        raise BadInput(f"unreadable YAML in {path / 'config.yaml'}: {str(e).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise BadInput(f"{path / 'config.yaml'} is not a YAML mapping of config keys")
    summary = None
    if (path / "summary.json").is_file():
        try:
            summary = json.loads((path / "summary.json").read_text())
        except (OSError, ValueError) as e:
            raise BadInput(f"unreadable JSON in {path / 'summary.json'}: {str(e).splitlines()[0]}") from None
        if not isinstance(summary, dict):
            raise BadInput(f"{path / 'summary.json'} is not a JSON object")
    return Run(path, config, _read_jsonl(path / "metrics.jsonl"), _read_jsonl(path / "evals.jsonl"),
               _read_jsonl(path / "events.jsonl"), summary)


def load_runs(paths) -> list[Run]:
    return [load_run(p) for p in discover(paths)]


# --- variants ---------------------------------------------------------------------------------
@dataclass
class Variant:
    name: str
    label: str                      # precision label alone (used to match baselines)
    runs: list[Run] = field(default_factory=list)
    ident: tuple = ()                # values of every variant key (the name shows a few of them)

    @property
    def reference(self) -> bool:
        return is_reference(self.runs[0].config)

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]


def _flatten(d: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out = {}
    for k, v in d.items():
        key = prefix + (str(k),)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = json.dumps(v, sort_keys=True, default=str) if isinstance(v, (list, dict)) else v
    return out


def _group_id(cfg: dict, prefix: tuple):
    node = cfg
    for k in prefix:
        node = node.get(k) if isinstance(node, dict) else None
    if isinstance(node, dict):
        return node.get("name", node.get("mode"))
    return None


def variant_keys(runs: list[Run]) -> list[tuple]:
    """Config keys (dotted paths) that split the runs into variants.

    A key under a named config group (a sub-dict with `name`, or `mode` for is_correction) only
    counts when it differs between runs of the *same* group choice: fp8_tensorwise having a
    `precision.scaling` that bf16 lacks is part of choosing the recipe, not a separate knob, but
    two fp8_tensorwise runs with different `precision.engine` are different variants.
    """
    flats = [_flatten(r.config) for r in runs]
    keys = sorted({k for f in flats for k in f})
    out = []
    for key in keys:
        if key[0] in EXCLUDED or (key[0] in LABEL_GROUPS and key[-1] in ("name", "mode") and len(key) == 2):
            continue
        # partition the runs by the identities of the named groups that enclose this key
        prefixes = [key[:i] for i in range(1, len(key)) if not (i == len(key) - 1 and key[-1] in ("name", "mode"))]
        parts: dict[tuple, set] = {}
        for r, f in zip(runs, flats):
            ident = tuple(str(_group_id(r.config, p)) for p in prefixes)
            parts.setdefault(ident, set()).add(json.dumps(f.get(key, "<unset>"), default=str))
        if any(len(v) > 1 for v in parts.values()):
            out.append(key)
    return out


def _fmt_key(cfg: dict, key: tuple) -> str:
    v = _flatten(cfg).get(key, "<unset>")
    if key[-1] in ("name", "mode") and len(key) > 1:
        key = key[:-1]  # task.name=addition reads better as task=addition
    return f"{'.'.join(key)}={v}"


def _priority(key: tuple, runs: list[Run]) -> tuple:
    """Keys a reader recognises first: recipe, then named group choices (model=, task=), then
    keys every run sets, then the rest; shorter paths before longer ones."""
    everywhere = all(key in _flatten(r.config) for r in runs)
    return (key != ("recipe",), key[-1] not in ("name", "mode"), not everywhere, len(key), key)


def label_keys(runs: list[Run], keys: list[tuple]) -> list[tuple]:
    """The few of `keys` that name the variants: greedily, in `_priority` order, a key is kept
    when it splits runs that the label and the keys kept so far leave together, until the
    variants are as finely split as by all keys. Mixed runs (two recipes, two models) differ in
    dozens of keys that follow from one choice; their names show that choice, not the dozens."""
    def blocks(ks) -> int:
        return len({(r.label, *(_fmt_key(r.config, k) for k in ks)) for r in runs})

    target, chosen = blocks(keys), []
    for key in sorted(keys, key=lambda k: _priority(k, runs)):
        if blocks(chosen) == target:
            break
        if blocks(chosen + [key]) > blocks(chosen):
            chosen.append(key)
    return [k for k in keys if k in chosen]


def group(runs: list[Run]) -> dict[str, Variant]:
    """Variants in a stable order: the reference (all-bf16, no IS) first, then by name. Runs are
    split by every key of `variant_keys`; names show only `label_keys` of them."""
    keys = variant_keys(runs)
    shown = label_keys(runs, keys)
    out: dict[str, Variant] = {}
    for r in runs:
        ident = tuple(_fmt_key(r.config, k) for k in keys)
        name = " ".join([r.label] + [_fmt_key(r.config, k) for k in shown])
        if name in out and out[name].ident != ident:  # unreachable by label_keys' construction
            raise AssertionError(f"variant name {name!r} is ambiguous")
        out.setdefault(name, Variant(name, r.label, ident=ident)).runs.append(r)
    order = sorted(out.values(), key=lambda v: (not v.reference, _natural(v.name)))
    return {v.name: v for v in order}


def pick_baseline(variants: dict[str, Variant], name: str | None = None) -> str:
    """The variant others are compared with: `name` if given, else the all-bf16/no-IS one, else
    the first."""
    if name is not None:
        if name not in variants:
            raise BadInput(f"unknown baseline variant {name!r}; valid: {', '.join(map(repr, variants))}")
        return name
    refs = [n for n, v in variants.items() if v.reference]
    return refs[0] if refs else next(iter(variants))


def match_metrics(pattern: str, names) -> list[str]:
    """Metric names matching a rule's metric (exact name or fnmatch glob such as eval/*/accuracy)."""
    return sorted(n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern))


def finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)
