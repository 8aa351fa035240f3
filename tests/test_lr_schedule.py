"""The learning-rate schedule: warm-up + cosine to lr·min_lr_ratio, and what a resume that
extends `steps` does to it (continues flat at the final lr, never jumps)."""
from __future__ import annotations

import math

import pytest

from bench.train.trainer import OptimConfig, lr_lambda, schedule_total
from helpers import read_jsonl, run_in_process


def reference_multiplier(step: int, warmup: int, total: int, r: float) -> float:
    """The schedule's definition in float64, written out independently of bench.train.trainer."""
    if step < warmup:
        return (step + 1.0) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * t))


@pytest.mark.parametrize("warmup,total,r", [(20, 200, 0.1), (2, 6, 0.0), (5, 5, 0.5)])
def test_lr_multiplier_matches_warmup_then_cosine_then_flat(warmup, total, r):
    f = lr_lambda(OptimConfig(warmup_steps=warmup, min_lr_ratio=r), total)
    for step in range(total + 10):
        assert f(step) == pytest.approx(reference_multiplier(step, warmup, total, r), rel=0, abs=1e-15), step
    assert f(total + 9) == r  # past the end: the final lr, exactly


def test_schedule_total_is_the_runs_original_length_on_resume():
    assert schedule_total(None, 60) == 60   # a fresh run (or a checkpoint from before it was kept)
    assert schedule_total(50, 60) == 50     # an extension keeps the original cosine
    assert schedule_total(50, 50) == 50


@pytest.mark.slow
def test_resume_with_more_steps_continues_at_the_final_lr(tmp_path):
    d = tmp_path / "run"
    common = [f"run_dir={d}", "optim.warmup_steps=2", "optim.lr=0.003", "optim.min_lr_ratio=0.1",
              "eval_every=100", "eval_problems=4", "batch_size=4", "monitor=off"]
    assert run_in_process("pretrain", [*common, "steps=6"]) == 0
    assert run_in_process("pretrain", [*common, "steps=10", "resume=true"]) == 0
    lrs = [m["train/lr"] for m in read_jsonl(d / "metrics.jsonl")]
    assert len(lrs) == 10
    expected = [0.003 * reference_multiplier(k, 2, 6, 0.1) for k in range(10)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[6:] == pytest.approx([0.003 * 0.1] * 4, rel=1e-12)  # flat at the final lr, no jump
