"""Benchmark: each precision recipe's pretrain step time vs bf16, and the numerics-monitor
overhead (same config, monitor on at the default interval vs off), measured side by side in one
process on this machine. Warm-up steps are excluded; medians over the timed steps (means for the monitor).

    .venv/bin/python scripts/bench_precision.py [--steps 30] [--warmup 5] [--json OUT]
"""
from __future__ import annotations

import argparse
from importlib.metadata import version
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import read_jsonl, run_in_process  # noqa: E402

RECIPES = ["bf16", "fp32", "fp16", "fp8_delayed", "fp8_tensorwise", "fp8_rowwise", "fp8_blockwise", "mxfp8"]


def step_time(overrides: list[str], steps: int, warmup: int, how=statistics.median) -> tuple[float, str]:
    """Median (or mean) step time after warm-up. The monitor comparison uses the mean: its cost
    lands on 1 step in `interval`, which a median would hide."""
    with tempfile.TemporaryDirectory() as d:
        run_in_process("pretrain", [f"steps={steps}", f"eval_every={steps}", "eval_problems=8",
                                    f"checkpoint_every={steps}", f"run_dir={d}/run", *overrides])
        times = [m["train/step_time_s"] for m in read_jsonl(Path(d) / "run" / "metrics.jsonl")][warmup:]
        engine = json.loads((Path(d) / "run" / "summary.json").read_text())["engines"]["precision"]
    return how(times), engine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--recipes", nargs="*", default=RECIPES)
    a = ap.parse_args()
    from bench.rundir import device_string

    res = {"device": device_string(torch.device("cuda" if torch.cuda.is_available() else "cpu")), "torch": torch.__version__,
           "torchao": version("torchao"),
           "threads": torch.get_num_threads(), "steps": a.steps, "warmup": a.warmup, "recipes": {}, "monitor": {}}
    base, _ = step_time(["precision=bf16", "monitor=off"], a.steps, a.warmup)
    for r in a.recipes:
        for engine in (["reference", "torchao"] if r in ("fp8_tensorwise", "fp8_rowwise") else ["auto"]):
            extra = [f"precision.engine={engine}"] if r.startswith(("fp8", "mx")) else []
            t, used = step_time([f"precision={r}", "monitor=off", *extra], a.steps, a.warmup)
            res["recipes"][f"{r}/{used}"] = {"step_s": t, "vs_bf16": t / base}
            print(f"{r:16s} {used:15s} step {t * 1e3:8.2f} ms   x{t / base:5.2f} vs bf16", flush=True)
    for r in ("bf16", "fp8_tensorwise"):
        off, _ = step_time([f"precision={r}", "monitor=off"], a.steps, a.warmup, statistics.mean)
        on, _ = step_time([f"precision={r}", "monitor=default"], a.steps, a.warmup, statistics.mean)
        res["monitor"][r] = {"off_s": off, "on_s": on, "overhead": on / off - 1}
        print(f"monitor overhead ({r}, interval 25): {100 * (on / off - 1):+.1f}%", flush=True)
    print(json.dumps(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
