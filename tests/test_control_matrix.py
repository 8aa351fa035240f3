"""The shipped positive control (issue 25, scripts/run_control.sh): a shortened run in which the
gate exits 1 through the reward or accuracy rule for a SYNTHETIC perturbation, with TIS beside it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_control_matrix_gate_exits_1_through_an_accuracy_or_reward_rule(tmp_path):
    env = {**os.environ, "PY": sys.executable, "WANDB_MODE": "disabled", "CONTROL_OUT": str(tmp_path / "out"),
           "CONTROL_CELLS": "bf16-bf16,perturb3.0,perturb3.0-tis", "CONTROL_SEEDS": "0,1", "CONTROL_STEPS": "4",
           "CONTROL_JOBS": "1"}
    # The default warm start (held-out accuracy ~0.7), shared with tests/test_readme.py through
    # runs/cache: a 60-step warm start earns reward 0 in every cell, and a control in which the
    # baseline earns nothing cannot show a reward drop (the gate then fails only on the mismatch bound).
    proc = subprocess.run(["bash", "scripts/run_control.sh", "eval_problems=32",
                           f"warmup.cache_dir={ROOT / 'runs' / 'cache'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (tmp_path / "out" / "gate.md").read_text()
    rows = [line for line in md.splitlines() if "SYNTHETIC" in line and "regression" in line]
    assert any("reward_mean" in r or "accuracy" in r for r in rows), md
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "SYNTHETIC-perturb(logits,σ=3)" in report and "is=tis" in report
