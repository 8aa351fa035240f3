"""Synthetic run dirs that follow the DESIGN.md §4 contract, for report/gate/baseline tests.

Curves are seeded random: a decaying loss, a saturating accuracy, a rising reward, each with
per-step noise and a per-run offset (so seeds differ the way real reruns do). Knobs inject the
regressions the gate must catch: lower eval accuracy, higher loss, overflow / nonfinite events,
a diverged tail, a missing summary.json, a larger trainer/generator mismatch.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import yaml


def write_run(root, *, recipe: str = "pretrain", precision: str = "bf16", trainer: str = "bf16",
              generator: str = "bf16", is_mode: str = "none", seed: int = 0, noise_seed: int | None = None,
              steps: int = 100, log_every: int = 10, eval_every: int = 25, task: str = "addition",
              acc_drop: float = 0.0, loss_shift: float = 0.0, mismatch_shift: float = 0.0, noise: float = 0.02,
              overflow_events: int = 0, nonfinite_events: int = 0, status: str = "completed",
              summary: bool = True, diverge_at: int | None = None, extra_config: dict | None = None,
              name: str | None = None) -> Path:
    """Write one run dir under `root` and return its path. `noise_seed` (default `seed`) draws the
    noise, so two runs with the same config seed can still be independent draws."""
    label = precision if recipe == "pretrain" else f"{trainer}-{generator}-{is_mode}"
    rng = np.random.default_rng([seed if noise_seed is None else noise_seed, zlib.crc32(label.encode())])
    run_name = name or f"{label}_{task}_s{seed}"
    path = Path(root) / run_name
    path.mkdir(parents=True)
    cfg = {"recipe": recipe, "run_name": run_name, "seed": seed, "steps": steps, "run_dir": str(path),
           "resume": False, "sweep": "fixture", "batch_size": 32, "device": "auto",
           "model": {"name": "tiny", "d_model": 128, "n_layers": 4},
           "task": {"name": task, "digits": 2},
           "logger": {"wandb": {"mode": "disabled"}}}
    if recipe == "pretrain":
        cfg["precision"] = {"name": precision, **({"engine": "reference", "scaling": "tensorwise"}
                                                   if precision.startswith("fp8") else {})}
    else:
        cfg["trainer_precision"] = {"name": trainer}
        cfg["generator_precision"] = {"name": generator}
        cfg["is_correction"] = {"mode": is_mode, "cap": 2.0, "lo": 0.5, "hi": 2.0, "veto": None,
                                "batch_normalize": False}
    cfg.update(extra_config or {})
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    offset = rng.normal(0, noise)  # per-run level: seeds differ by more than per-step noise
    fp8_gap = 0.03 if "fp8" in (precision + generator) else 0.0
    metrics, evals, events = [], [], []
    for step in range(log_every, steps + 1, log_every):
        row = {"step": step, "wall_s": 0.01 * step}
        loss = 2.0 * np.exp(-step / 40) + 0.3 + loss_shift + offset + rng.normal(0, noise / 2)
        if diverge_at is not None and step >= diverge_at:
            loss = None  # NaN: the JSONL writer stores it as null
        row["train/loss"] = loss
        row["train/grad_norm"] = float(abs(1.0 + rng.normal(0, 0.1)))
        if recipe == "grpo":
            row["rollout/reward_mean"] = float(0.8 * (1 - np.exp(-step / 30)) - acc_drop + offset + rng.normal(0, noise / 2))
            row["mismatch/token_mult_prob_error"] = float(1.0 + 0.002 + fp8_gap / 3 + mismatch_shift + abs(rng.normal(0, 0.001)))
            row["mismatch/gen_kl_k3"] = float(1e-5 + fp8_gap / 100 + abs(rng.normal(0, 1e-6)))
            row["is/ess"] = float(0.99 - fp8_gap + rng.normal(0, 0.002))
            row["is/weight_mean"] = float(1.0 + rng.normal(0, 0.002))
        metrics.append(row)
        if step % eval_every == 0:
            acc = 0.9 * (1 - np.exp(-step / 30)) - acc_drop + offset + rng.normal(0, noise / 2)
            evals.append({"step": step, f"eval/{task}/accuracy": float(min(1.0, acc)),
                          "eval/loss": float(1.5 * np.exp(-step / 40) + 0.4 + loss_shift + offset)})
    for i in range(overflow_events):
        events.append({"step": log_every * (1 + i % (steps // log_every)), "kind": "overflow",
                       "where": "layers.1.mlp.down/input", "value": 0.01, "threshold": 0.001, "action": "log"})
    for i in range(nonfinite_events):
        events.append({"step": steps, "kind": "nonfinite", "where": "train/loss", "value": 1.0,
                       "threshold": 0.0, "action": "halt"})
    events.sort(key=lambda e: e["step"])
    for fname, rows in (("metrics.jsonl", metrics), ("evals.jsonl", evals), ("events.jsonl", events)):
        (path / fname).write_text("".join(json.dumps(r) + "\n" for r in rows))

    if summary:
        keys = ["train/loss"] + (["rollout/reward_mean", "mismatch/token_mult_prob_error"] if recipe == "grpo" else [])
        final = {k: metrics[-1][k] for k in keys}
        final.update({k: v for k, v in evals[-1].items() if k != "step"} if evals else {})
        best = {k: (max if k.endswith("accuracy") else min)(e[k] for e in evals) for k in final if k.startswith("eval/")}
        (path / "summary.json").write_text(json.dumps({
            "status": status, "recipe": recipe, "run_name": run_name, "final": final, "best": best,
            "engines": {"trainer": "reference"}, "versions": {"python": "3.11", "torch": "2.6"},
            "device": "cpu (fixture)", "wall_s": 0.01 * steps, "steps_completed": steps,
            "eval_regressions": []}, indent=2))
    return path


def write_matrix(root, variants: list[dict], seeds=(0, 1, 2), **common) -> list[Path]:
    """One run per variant (a dict of write_run kwargs) per seed."""
    return [write_run(root, seed=s, **{**common, **v}) for v in variants for s in seeds]


def cli(*args) -> int:
    """`fp8bench ARGS...` in this process; its exit code (argparse errors exit through SystemExit)."""
    from bench.cli import main

    try:
        return main([str(a) for a in args])
    except SystemExit as e:
        return e.code
