"""Sweeps and preemption: multirun gives complete run dirs; SIGTERM checkpoints and resume is exact;
a corrupted checkpoint is refused with one line."""
import json
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT, read_jsonl, run_cli

pytestmark = pytest.mark.slow  # end-to-end runs: the fast loop is -m "not slow"

TINY = ["model.n_layers=2", "batch_size=16", "eval_problems=16", "logger=disabled", "threads=1", "monitor.interval=0"]


def test_two_job_multirun_gives_two_complete_run_dirs_and_compare_reads_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli(["-m", "recipes.pretrain", "-m", "seed=0,1", "steps=6", "eval_every=6", *TINY,
                 f"hydra.sweep.dir={sweep}"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    dirs = sorted(p.parent for p in sweep.rglob("summary.json"))
    assert len(dirs) == 2
    for d in dirs:
        assert json.loads((d / "summary.json").read_text())["status"] == "completed"
        assert json.loads((d / "summary.json").read_text())["run_name"].endswith(("s0", "s1"))
    r = run_cli(["-m", "bench.cli", "compare", str(sweep), "-o", str(tmp_path / "report")])
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "report" / "report.md").is_file()


def test_sigterm_checkpoints_and_resume_reaches_the_uninterrupted_metrics(tmp_path):
    common = ["-m", "recipes.pretrain", "precision=fp32", "steps=40", "eval_every=40", "checkpoint_every=1000", *TINY]
    full = tmp_path / "full"
    assert run_cli(common + [f"run_dir={full}"]).returncode == 0
    part = tmp_path / "part"
    env_cmd = [sys.executable, *common, f"run_dir={part}"]
    p = subprocess.Popen(env_cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={"WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until training is under way
        m = part / "metrics.jsonl"
        if m.exists() and len(m.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=120)
    assert p.returncode == 0
    s = json.loads((part / "summary.json").read_text())
    assert s["status"] == "preempted" and s["steps_completed"] < 40
    assert any(e["kind"] == "preempt" for e in read_jsonl(part / "events.jsonl"))
    assert run_cli(common + [f"run_dir={part}", "resume=true"]).returncode == 0
    a = {m["step"]: m["train/loss"] for m in read_jsonl(full / "metrics.jsonl")}
    b = {m["step"]: m["train/loss"] for m in read_jsonl(part / "metrics.jsonl")}
    assert a == b
    assert json.loads((part / "summary.json").read_text())["status"] == "completed"


def test_corrupted_checkpoint_is_refused_with_one_line(tmp_path):
    d = tmp_path / "run"
    assert run_cli(["-m", "recipes.pretrain", "steps=4", "eval_every=4", *TINY, f"run_dir={d}"]).returncode == 0
    ck = sorted((d / "checkpoints").glob("step_*.pt"))[-1]
    ck.write_bytes(ck.read_bytes()[: len(ck.read_bytes()) // 2])  # truncated
    r = run_cli(["-m", "recipes.pretrain", "steps=8", "eval_every=4", *TINY, f"run_dir={d}", "resume=true"])
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "corrupted or truncated" in r.stderr


def test_slurm_launcher_code_path_runs_through_submitits_local_executor(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli(["-m", "recipes.pretrain", "-m", "hydra/launcher=slurm_local", "seed=3", "steps=3", "eval_every=3",
                 *TINY, f"hydra.sweep.dir={sweep}"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (summary,) = sweep.rglob("summary.json")
    assert json.loads(summary.read_text())["status"] == "completed"
