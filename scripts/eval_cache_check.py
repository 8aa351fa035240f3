"""Greedy eval with eval_kv_cache=true against full recompute on trained checkpoints, bf16 autocast
(the trainer's precision in docs/findings.md's 128-token matrix), cpu_half_gemm's fp32 route:
how many of the held-out answers are equal, and each path's wall time (one thread).
    python scripts/eval_cache_check.py RUN_DIR... [--problems 24]
A run dir of `task=longstr task.op=copy task.length=128 model.max_seq_len=264` (the matrix's)."""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.models.decoder import ModelConfig, Transformer
from bench.precision.cpu_gemm import half_gemm_via_fp32
from bench.tasks import build_task
from bench.train.checkpoint import load
from bench.train.eval import EVAL_SEED, greedy_answers

ap = argparse.ArgumentParser()
ap.add_argument("runs", nargs="+")
ap.add_argument("--problems", type=int, default=24)
args = ap.parse_args()
torch.set_num_threads(1)
task = build_task({"name": "longstr", "op": "copy", "length": 128})
prompts = task.encode_prompts(task.problems("eval", args.problems, EVAL_SEED))
bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
n = task.seq_len - task.prompt_len
for run in args.runs:
    state = load(sorted(Path(run).glob("checkpoints/*.pt"))[-1])
    model = Transformer(ModelConfig(max_seq_len=264))
    model.load_state_dict(state["trainer"]["model"])
    model.eval()
    with half_gemm_via_fp32():
        t0 = time.time()
        ref = greedy_answers(model, task, prompts, bf16, n)
        t1 = time.time()
        got = greedy_answers(model, task, prompts, bf16, n, kv_cache=True)
        t2 = time.time()
    same = sum(a == b for a, b in zip(ref, got))
    print(f"{Path(run).name[:40]}: {same} of {len(ref)} answers equal; recompute {t1 - t0:.1f} s, cached {t2 - t1:.1f} s")
