"""One writer per run dir (an advisory lock naming its holder, stale locks taken over) and
resume cut-back (every JSONL reads as one run; cut lines kept in a side file)."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from bench.core import lock as runlock

from bench.run import rundir
from bench.core.errors import BadInput
from helpers import ROOT


def hold_lock_in_child(d):
    """A live process that holds the run dir's lock until killed; returns it once the lock is held."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from bench.core import lock as runlock
        runlock.acquire(__import__("pathlib").Path({str(d)!r}))
        print("held", flush=True)
        time.sleep(600)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_naming_the_holders_pid_and_host(tmp_path):
    p = hold_lock_in_child(tmp_path)
    try:
        with pytest.raises(BadInput) as e:
            runlock.acquire(tmp_path)
        msg = str(e.value)
        assert f"pid {p.pid} on host {socket.gethostname()}" in msg and "\n" not in msg
    finally:
        p.kill()
        p.wait()


def test_a_dead_holders_lock_is_taken_over_and_names_it(tmp_path):
    p = hold_lock_in_child(tmp_path)
    p.kill()  # SIGKILL: no clean release, its name stays in the lock file
    p.wait()
    held = runlock.acquire(tmp_path)
    try:
        assert held.stale == f"{p.pid} {socket.gethostname()}"
    finally:
        runlock.release(tmp_path)
    # A clean release leaves no name: the next writer takes nothing over.
    assert runlock.acquire(tmp_path).stale is None
    runlock.release(tmp_path)


def test_lock_is_reentrant_within_one_process_and_released_cleanly(tmp_path):
    a = runlock.acquire(tmp_path)
    assert runlock.acquire(tmp_path) is a
    runlock.release(tmp_path)
    assert runlock.held(tmp_path) is None and (tmp_path / runlock.LOCK_NAME).read_text() == ""


def test_resume_cut_back_keeps_the_checkpointed_prefix_and_moves_the_rest_aside(tmp_path):
    lines = [json.dumps({"step": i, "train/loss": 1.0 / (i + 1)}) + "\n" for i in range(10)]
    (tmp_path / "metrics.jsonl").write_text("".join(lines[:6]))
    (tmp_path / "evals.jsonl").write_text('{"step": 5}\n')
    sizes = rundir.jsonl_sizes(tmp_path)
    # The crashed segment wrote steps 6..9 (the last one torn by SIGKILL) and a samples file.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write("".join(lines[6:])[:-7])
    (tmp_path / "samples.jsonl").write_text('{"step": 8}\n')
    cut = rundir.cut_back(tmp_path, sizes, "T1")
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(lines[:6])
    assert (tmp_path / "metrics.jsonl.cut-T1").read_text() == "".join(lines[6:])[:-7]
    assert (tmp_path / "evals.jsonl").read_text() == '{"step": 5}\n' and "evals.jsonl" not in cut
    assert (tmp_path / "samples.jsonl").read_text() == "" and (tmp_path / "samples.jsonl.cut-T1").is_file()
    assert cut == {"metrics.jsonl": len("".join(lines[6:])[:-7]), "samples.jsonl": len('{"step": 8}\n')}


def test_a_run_dir_that_cannot_hold_the_lock_is_one_line_of_bad_input(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BadInput, match=r"run_dir=.*afile cannot hold a lock file \(Not a directory\)"):
        runlock.acquire(tmp_path / "afile")
