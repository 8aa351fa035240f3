"""What defines a run, so the gate never compares a 10-step run with a 60-step baseline.

A run is defined by its resolved config minus the keys that only say where, how often or how
loudly it was recorded (NOT_DEFINING below: seed, paths, logging, checkpoint cadence, threads,
monitor sampling, event thresholds). Everything else (recipe, model, task, steps, optimizer,
GRPO knobs, warm-up, precisions, IS correction, ...) changes what the numbers mean. This is a
deny-list on purpose: a knob added tomorrow counts as defining until someone argues otherwise,
so a new knob can make the gate refuse, never silently compare unlike runs.

The precision groups (LABEL_GROUPS: the thing a gate is there to compare) are part of the
identity only when a candidate is gated against the *same* precision label: fp8 against the bf16
reference differs in precision by design, fp8 against an earlier fp8 must match in every knob.
"""
from __future__ import annotations

import json

from bench.report.runs import LABEL_GROUPS

# Top-level keys, or dotted paths, that never change what a run computes.
NOT_DEFINING = ("seed", "run_name", "run_dir", "sweep", "resume", "wandb_id", "logger", "threads",
                "checkpoint_every", "keep_checkpoints", "stop_after", "monitor", "hydra",
                "eval_regression_margin", "mismatch_spike_threshold", "warmup.cache_dir", "parallel")


def _flat(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True, default=str)
    return out


# Dotted keys that are part of the label like the precision groups: a synthetic perturbation
# (generator.perturb, bench/report/runs.py synthetic_label) is what a control matrix compares.
LABEL_KEYS = ("generator.perturb",)


def _skipped(key: str, with_precision: bool) -> bool:
    top = key.split(".", 1)[0]
    if not with_precision and (top in LABEL_GROUPS or any(key.startswith(k + ".") for k in LABEL_KEYS)):
        return True
    return any(key == n or key.startswith(n + ".") for n in NOT_DEFINING)


def defining(cfg: dict, with_precision: bool = True) -> dict[str, str]:
    """Dotted key -> JSON-encoded value of every key that defines the run."""
    return {k: v for k, v in _flat(cfg).items() if not _skipped(k, with_precision)}


def device_type(recorded) -> str | None:
    """The kind of device a run used, from summary.json's `device` ("cpu (AMD EPYC, ...)" or the
    CUDA device's name, bench/run/rundir.py device_string); None when nothing was recorded."""
    if not isinstance(recorded, str) or not recorded:
        return None
    return "cpu" if recorded.startswith("cpu") else "cuda"


def resolved(variant: dict) -> dict:
    """A variant's config with `device` replaced by the device its runs used: `device: auto` that
    ran on the CPU is the same run as `device: cpu` (and `cuda:1` as `cuda`), so the gate compares
    what ran, not how it was asked for. Unchanged when the runs recorded no device or disagree."""
    cfg = variant.get("config") or {}
    kinds = {device_type(r.get("device")) for r in variant.get("runs", [])}
    if len(kinds) != 1 or None in kinds or "device" not in cfg:
        return cfg
    return {**cfg, "device": kinds.pop()}


def differences(base_cfg: dict, cand_cfg: dict, with_precision: bool) -> tuple[list[str], list[str]]:
    """(`key: baseline value vs candidate value` for every defining key set on both sides with
    different values, `key` for every defining key set on one side only). The second list is
    mostly knobs added to the harness after the baseline was recorded: the gate reports them but
    does not refuse on them, or every new knob would invalidate every committed baseline."""
    b, c = defining(base_cfg, with_precision), defining(cand_cfg, with_precision)
    both = sorted(set(b) & set(c))
    return ([f"{k}: {b[k]} vs {c[k]}" for k in both if b[k] != c[k]],
            [f"{k} (only in the {'baseline' if k in b else 'candidate'})" for k in sorted(set(b) ^ set(c))])
