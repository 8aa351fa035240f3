"""Crash + resume reads as one run: every JSONL is cut back to the resumed checkpoint (cut lines
kept aside), wall_s never goes backwards, a dead writer's lock is taken over with an event, and
a live writer's is refused with one line."""
import json
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import ROOT, read_jsonl, run_cli, run_in_process

pytestmark = pytest.mark.slow  # end-to-end runs: the fast loop is -m "not slow"

TINY = ["model.n_layers=2", "batch_size=16", "eval_problems=16", "monitor.interval=0", "precision=fp32"]


def metric_rows(d):
    return read_jsonl(d / "metrics.jsonl")


def assert_one_run(d, steps):
    rows = metric_rows(d)
    assert [m["step"] for m in rows] == list(range(steps))  # each step exactly once, in order
    walls = [m["wall_s"] for m in rows]
    assert walls == sorted(walls)


def test_resume_cuts_lines_written_after_the_checkpoint_and_takes_over_a_dead_writers_lock(tmp_path):
    d = tmp_path / "run"
    common = TINY + ["steps=12", "eval_every=4", "checkpoint_every=4", f"run_dir={d}"]
    assert run_in_process("pretrain", common + ["stop_after=8"]) == 0
    # What a crash after the step-8 checkpoint leaves: two more steps' lines, a torn one, an
    # eval, and the dead writer's name in the lock file.
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "wall_s": 99.0, "train/loss": 1.0}\n{"step": 9, "wall_s": 99.5}\n{"step": 1')
    with open(d / "evals.jsonl", "a") as f:
        f.write('{"step": 9, "eval/loss": 0.1}\n')
    (d / ".lock").write_text("999999 deadhost")
    assert run_in_process("pretrain", common + ["resume=true"]) == 0
    assert_one_run(d, 12)
    assert [e["step"] for e in read_jsonl(d / "evals.jsonl")] == [4, 8, 12]
    (cut,) = d.glob("metrics.jsonl.cut-*")
    assert cut.read_text().endswith('{"step": 1') and '"step": 9' in cut.read_text()
    assert list(d.glob("evals.jsonl.cut-*"))
    kinds = [(e["kind"], e["where"]) for e in read_jsonl(d / "events.jsonl")]
    assert ("lock_takeover", "999999 deadhost") in kinds and [k for k, _ in kinds].count("resume") == 1


def test_a_second_writer_on_a_running_dir_is_refused_with_one_line_and_exit_2(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    code = textwrap.dedent(f"""
        import sys, time, pathlib
        sys.path.insert(0, {str(ROOT)!r})
        from bench.core import lock as runlock
        runlock.acquire(pathlib.Path({str(d)!r}))
        print("held", flush=True)
        time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = run_cli(["-m", "recipes.pretrain", *TINY, "steps=2", f"run_dir={d}", "logger=disabled", "threads=1"])
        assert r.returncode == 2
        (line,) = r.stderr.strip().splitlines()
        assert f"in use by pid {holder.pid}" in line
        assert not (d / "metrics.jsonl").exists()  # nothing ran
    finally:
        holder.kill()
        holder.wait()


def wait_for_lines(path, n, proc, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.02)


def test_sigkill_at_random_steps_five_times_then_resume_reads_as_one_uninterrupted_run(tmp_path):
    steps = 40
    common = ["-m", "recipes.pretrain", *TINY, f"steps={steps}", "eval_every=10", "checkpoint_every=5",
              "logger=disabled", "threads=1"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_cli(common + [f"run_dir={full}"]).returncode == 0
    rng, kills = random.Random(0), []
    env = {"WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    for i in range(5):
        args = common + [f"run_dir={part}"] + (["resume=true"] if i else [])
        p = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        done = len(metric_rows(part)) if (part / "metrics.jsonl").exists() else 0
        target = min(steps - 2, done + rng.randint(3, 9))
        wait_for_lines(part / "metrics.jsonl", target, p)
        p.send_signal(signal.SIGKILL)
        _, err = p.communicate(timeout=60)
        assert p.returncode == -signal.SIGKILL, err[-2000:]
        kills.append(len(metric_rows(part)))
    r = run_cli(common + [f"run_dir={part}", "resume=true"])
    assert r.returncode == 0, (kills, r.stderr[-3000:])
    assert_one_run(part, steps)
    a = {m["step"]: m["train/loss"] for m in metric_rows(full)}
    b = {m["step"]: m["train/loss"] for m in metric_rows(part)}
    assert a == b, kills
    assert read_jsonl(full / "evals.jsonl") == read_jsonl(part / "evals.jsonl")
    # A segment killed before its first checkpoint has its resume/takeover events cut with the
    # rest of its lines: kept, in the side files. Across both, each of the 5 resumes is there once.
    kept = [e["kind"] for e in read_jsonl(part / "events.jsonl")]
    aside = [json.loads(line)["kind"] for f in part.glob("events.jsonl.cut-*")
             for line in f.read_text().splitlines() if line.endswith("}")]
    assert (kept + aside).count("resume") == 5 and (kept + aside).count("lock_takeover") == 5
    assert json.loads((part / "summary.json").read_text())["status"] == "completed"
