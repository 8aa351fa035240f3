"""Run README.md's examples in full and record what their comments quote (readme_numbers.py examples).

Each ```` ```bash test ```` command runs as written, in README order, from one scratch directory (so
its `run_dir=runs/demo/...` and the GRPO warm-start cache `runs/cache` start fresh there) with
`threads=1` appended to recipe commands: the README says its numbers are single-threaded. measure()
reads the figures a command's run dir holds into a flat dict of named values; quoted() says which
of them, in order, the command's README comment quotes. tests/test_readme_claims.py pairs the
comment's numbers with quoted() over the recorded values, so the README cannot drift from a
measurement.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from readme_blocks import Command

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("scripts/pretrain", "scripts/grpo")
MEAN_OVER = 10  # reward and mismatch are quoted as means over the first / last 10 steps: one step is noisy


def _rows(path: Path, start: int = 0) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines()[start:] if l.strip()] if path.is_file() else []


def _opt(args: list[str], key: str) -> str | None:
    return next((a.split("=", 1)[1] for a in args if a.startswith(key + "=")), None)


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def kind(c: Command) -> str:
    a = c.args
    if c.exit:
        return "bad_input"
    if a[0] == "scripts/fp8bench":
        return a[1]
    if "-m" in a:
        return "sweep"
    if "stress=outlier" in a:
        return "stress"
    if "stop_after" in c.text or "resume=true" in a:
        return "resume"
    return "grpo" if a[0] == "scripts/grpo" else "pretrain"


def _accuracy(evals: list[dict], at: int) -> float | None:
    row = evals[at] if evals else {}
    return next((v for k, v in row.items() if k.endswith("/accuracy")), None)


def run_figures(d: Path, metrics_from: int = 0) -> dict:
    """The figures of one run dir; metrics rows from `metrics_from` on (what this command appended)."""
    m, ev, events = _rows(d / "metrics.jsonl", metrics_from), _rows(d / "evals.jsonl"), _rows(d / "events.jsonl")
    summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else {}
    cfg = yaml.safe_load((d / "config.yaml").read_text()) if (d / "config.yaml").is_file() else {}
    out = {"status": summary.get("status"), "first_step": m[0]["step"] if m else None,
           "last_step": m[-1]["step"] if m else None, "eval_step_end": ev[-1]["step"] if ev else None,
           "acc_start": _accuracy(ev, 0), "acc_end": _accuracy(ev, -1),
           "eval_loss": ev[-1].get("eval/loss") if ev else None}
    loss = [r["train/loss"] for r in m if "train/loss" in r]
    out.update(loss_first=loss[0] if loss else None, loss_last=loss[-1] if loss else None)
    for name, key in (("reward", "rollout/reward_mean"), ("tmpe", "mismatch/token_mult_prob_error")):
        xs = [r[key] for r in m if r.get(key) is not None]
        out[f"{name}_first{MEAN_OVER}"], out[f"{name}_last{MEAN_OVER}"] = _mean(xs[:MEAN_OVER]), _mean(xs[-MEAN_OVER:])
    plans = summary.get("precision", {})
    trainer = plans.get("trainer") or plans.get("precision") or {}  # GRPO names both sides; pretrain has one
    out.update(fp8_linears=trainer.get("fp8_modules"), engine=trainer.get("engine"),
               kept_modules=trainer.get("kept_modules"))
    stress = cfg.get("stress") or {}
    if stress.get("enabled"):  # the outlier's own overflow: the first at its module from its start step
        site = f"{stress['module']}/input"
        hit = next((e for e in events if e["kind"] == "overflow" and e["where"] == site
                    and e["step"] >= stress["from_step"]), None)
        out.update(outlier_step=hit and hit["step"], outlier_site=hit and hit["where"],
                   outlier_overflow_frac=hit and hit["value"],
                   overflows_before=sum(e["kind"] == "overflow" and e["step"] < stress["from_step"] for e in events),
                   first_spike_after=next((e["step"] for e in events if e["kind"].endswith("_spike")
                                           and e["step"] > stress["from_step"]), None),
                   first_divergence=next((e["step"] for e in events if e["kind"].endswith("_divergence")), None))
    return out


def measure(c: Command, cwd: Path, before: dict) -> dict:
    """What command c left behind, beyond its exit code and wall time."""
    k, a = kind(c), c.args
    if k in ("pretrain", "grpo", "stress", "resume"):
        d = cwd / _opt(a, "run_dir")
        return run_figures(d, before.get(str(d), 0))
    if k == "sweep":
        jobs = sorted(p.parent for p in (cwd / _opt(a, "hydra.sweep.dir")).rglob("summary.json"))
        out = {"jobs": len(jobs)}
        for j in jobs:  # "0_generator_precision=bf16,seed=0,steps=60" -> "generator_precision=bf16,seed=0"
            name = ",".join(p for p in j.name.split("_", 1)[1].split(",") if not p.startswith("steps="))
            f = run_figures(j)
            out.update({f"{name}/acc_start": f["acc_start"], f"{name}/acc_end": f["acc_end"],
                        f"{name}/tmpe_last{MEAN_OVER}": f[f"tmpe_last{MEAN_OVER}"]})
        return out
    if k == "example-jsonl":
        return {"rows": len(_rows(cwd / a[2]))}
    return {}


def quoted(c: Command, values: dict) -> list[str]:
    """Names of the recorded values the README comment of c quotes, in the order it quotes them."""
    k = kind(c)
    if k == "pretrain":
        return ["fp8_linears", "eval_loss", "wall_min"] if values.get("fp8_linears") \
            else ["loss_first", "loss_last", "eval_loss", "wall_min"]
    if k == "grpo" and _opt(c.args, "task") is None:
        return ["acc_start", "acc_end", f"reward_first{MEAN_OVER}", f"reward_last{MEAN_OVER}",
                f"tmpe_last{MEAN_OVER}", "wall_min"]
    if k == "stress":
        return ["outlier_step", "first_spike_after", "first_divergence", "wall_min"]
    if k == "resume":  # the steps this command ran: what a stop, a resume and an extension each add
        return ["first_step", "last_step"]
    if k == "sweep":  # seed 0's mismatch with a bf16 and an FP8 generator: the variants' difference
        return ["jobs", *(f"generator_precision={g},seed=0/tmpe_last{MEAN_OVER}" for g in ("bf16", "fp8_blockwise")),
                "wall_min"]
    if k == "example-jsonl":
        return ["rows"]
    return []


def metrics_lines(cwd: Path) -> dict:
    """Lines already in every metrics.jsonl under cwd: a resumed run appends, and a command's own rows follow."""
    return {str(p.parent): len(p.read_text().splitlines()) for p in cwd.rglob("metrics.jsonl")}


def run_all(blocks: list[list[Command]], cwd: Path) -> list[dict]:
    """Every command in README order from one directory, as a user runs them from one checkout
    (and as tests/test_readme.py does): later commands read earlier run dirs, one warm-start cache."""
    env = {**os.environ, "WANDB_MODE": "disabled", "FP8BENCH_PYTHON": sys.executable}
    cwd.mkdir(parents=True, exist_ok=True)
    records = []
    for c in (c for block in blocks for c in block):
        args = c.args + (["threads=1"] if c.args[0] in RECIPES else [])
        before, t0 = metrics_lines(cwd), time.monotonic()
        r = subprocess.run([str(ROOT / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True)
        wall = time.monotonic() - t0
        (cwd / f"cmd{len(records)}.log").write_text(r.stdout + r.stderr)
        records.append({"command": c.text, "exit": r.returncode, "wall_s": round(wall, 1), "wall_min": wall / 60,
                        **measure(c, cwd, before)})
        print(f"[{wall:6.0f}s exit {r.returncode}] {c.text}", flush=True)
        if r.returncode != c.exit:
            print((r.stdout + r.stderr)[-2000:], file=sys.stderr)
    return records
