"""Run-dir and resume checks of the validation pass: all before the run dir is created or touched.

A fresh run needs a run_dir that can be created (no file in the way, a writable parent) and that
holds no earlier run. A resumed run needs a loadable checkpoint and the same definition as the run
that wrote it: config.yaml in the run dir is the record, and any change to what defines the run
(DEFINING below) is refused with one line listing the differences. What may change on resume:
`steps` (extending a run), and run control (eval/checkpoint cadence, logger, monitor, policy,
device, threads, stop_after).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from bench.core import lock as runlock
from bench.config.checks import need

# What a run *is*: changing any of these mid-run would make its files describe two different runs.
DEFINING = ("recipe", "model", "task", "precision", "trainer_precision", "generator_precision", "is_correction",
            "seed", "optim", "batch_size", "grpo", "generator", "warmup", "init_from", "stress")
MAX_LISTED = 6
# What a start writes before its first step: a dir holding only these, no checkpoint and no metrics
# row, is the leftover of a failed start (a crash while building the model, a bad checkpoint), not
# a run; a rerun reuses it instead of refusing it (bench.run.rundir.prepare clears it).
START_FILES = ("config.yaml", "summary.json", "checkpoints", runlock.LOCK_NAME, "metrics.jsonl", "events.jsonl",
               "evals.jsonl", "samples.jsonl", "attribution.jsonl")


def failed_start(path: Path) -> bool:
    """`path` holds nothing but what a start that completed no step leaves behind."""
    if not path.is_dir() or any(p.name not in START_FILES for p in path.iterdir()):
        return False
    ckpts = path / "checkpoints"
    if ckpts.exists() and (not ckpts.is_dir() or any(ckpts.iterdir())):
        return False
    metrics = path / "metrics.jsonl"
    return not metrics.is_file() or not metrics.read_text(errors="replace").strip()


def check_run_dir(path: Path, resume: bool) -> None:
    """The run dir can be created and written, and (without resume) holds no earlier run. Only
    rank 0 checks: it alone creates the run dir, and the other ranks would race its mkdir."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != path:
        need(existing.is_dir(), f"run_dir={path} is under a file ({existing}); valid: a path whose existing "
                                f"parents are directories")
    else:
        need(path.is_dir(), f"run_dir={path} exists and is not a directory; valid: a directory path")
    try:  # a real write: os.access says yes to root on read-only mounts
        Path(tempfile.mkdtemp(dir=existing, prefix=".fp8bench-write-test-")).rmdir()
    except OSError as e:
        need(False, f"run_dir={path} cannot be created: {existing} is not writable ({e.strerror}); "
                    f"valid: a path on a writable file system")
    if (holder := runlock.live_holder(path)) is not None:  # a running writer: name it, whatever else holds
        pid, host = (holder.split() + ["?", "?"])[:2]
        need(False, f"run_dir={path} is in use by pid {pid} on host {host} (lock {path / runlock.LOCK_NAME}); "
                    f"valid: wait for that run to end, or choose another run_dir")
    if not resume:
        need(not (path.is_dir() and any(path.iterdir())) or failed_start(path),
             f"run_dir={path} already holds a run; pass resume=true to continue it "
             f"or choose another run_dir (runs are never overwritten)")


def check_resume(cfg, path: Path) -> dict:
    """The latest checkpoint loads (checksum verified) and the run's definition is unchanged.
    Returns the checkpoint state the recipe restores from."""
    from bench.train import checkpoint as ckpt

    latest = ckpt.latest(path / "checkpoints") if (path / "checkpoints").is_dir() else None
    need(latest is not None, f"resume=true but run_dir={path} has no checkpoint under checkpoints/; "
                             f"valid: a run dir written by an earlier run, or resume=false"
                             + (" (it holds only a failed start, which a rerun reuses)" if failed_start(path) else ""))
    saved = path / "config.yaml"
    need(saved.is_file(), f"resume=true but run_dir={path} has no config.yaml to check the run against; "
                          f"valid: a run dir written by an earlier run")
    try:
        old = OmegaConf.to_container(OmegaConf.load(saved))
    except Exception as e:
        need(False, f"{saved} is not readable YAML ({type(e).__name__}); valid: the config.yaml a run wrote")
    new = OmegaConf.to_container(cfg, resolve=True)
    diffs = config_diff(old, new)
    listed = "; ".join(diffs[:MAX_LISTED]) + (f"; +{len(diffs) - MAX_LISTED} more" if len(diffs) > MAX_LISTED else "")
    need(not diffs, f"resume=true would change what defines the run in {path}: {listed}; valid: the run's own "
                    f"values (steps may grow; eval, checkpoint, logger, monitor and policy settings may change)")
    state = ckpt.load(latest)
    need(state["step"] <= cfg.steps, f"steps={cfg.steps} is below the checkpoint's step {state['step']}; "
                                     f"valid: steps >= {state['step']}")
    return state


def config_diff(old: dict, new: dict) -> list[str]:
    """'key: old -> new' for each defining key that differs. A group whose `name` changed is one
    entry (its other keys differ as a consequence); keys the saved config lacks (written before
    the key existed) are not compared."""
    out = []
    for top in DEFINING:
        if top not in old or top not in new:
            continue
        a, b = old[top], new[top]
        if isinstance(a, dict) and isinstance(b, dict) and a.get("name") != b.get("name"):
            out.append(f"{top}: {a.get('name')} -> {b.get('name')}")
            continue
        out += [f"{k}: {x!r} -> {y!r}" for k, (x, y) in leaf_diff(top, a, b).items()]
    return out


def leaf_diff(prefix: str, a, b) -> dict:
    if isinstance(a, dict) and isinstance(b, dict):
        out = {}
        for k in a:
            if k in b:
                out.update(leaf_diff(f"{prefix}.{k}", a[k], b[k]))
        return out
    return {} if a == b else {prefix: (a, b)}
