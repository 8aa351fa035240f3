"""A failed start leaves nothing that blocks a rerun (issue 27): a run dir that completed no step
(only `.lock` and an empty checkpoints/, or also config.yaml, a `failed` summary, empty metrics and
an eval row) is reused by a plain rerun; a dir with any progress, or with a file the harness did
not write, is still refused without resume=true."""
import json

import pytest

from bench.config.rundir_checks import failed_start
from helpers import QUIET, read_jsonl, run_in_process
from test_validation import one_line_error

TINY = ["steps=1", "eval_every=1", "checkpoint_every=1", "eval_problems=4", "batch_size=4", "monitor.interval=0"]


def lock_and_empty_checkpoints(d):
    (d / "checkpoints").mkdir(parents=True)
    (d / ".lock").write_text("999999 deadhost\n")  # the dead start's pid: not a live holder
    return d


def failed_after_open(d):
    lock_and_empty_checkpoints(d)
    (d / "config.yaml").write_text("seed: 0\n")
    (d / "summary.json").write_text(json.dumps({"status": "failed", "steps_completed": 0}))
    (d / "metrics.jsonl").write_text("")
    (d / "evals.jsonl").write_text('{"step": 0, "eval/loss": 3.0}\n')
    return d


@pytest.mark.parametrize("plant", [lock_and_empty_checkpoints, failed_after_open])
def test_rerun_reuses_a_run_dir_that_completed_no_step(plant, tmp_path):
    d = plant(tmp_path / "run")
    assert failed_start(d)
    assert run_in_process("pretrain", [*TINY, f"run_dir={d}"]) == 0
    assert json.loads((d / "summary.json").read_text())["status"] == "completed"
    assert [r["step"] for r in read_jsonl(d / "metrics.jsonl")] == [0]
    assert [r["step"] for r in read_jsonl(d / "evals.jsonl")] == [1]  # the dead start's eval row is gone


@pytest.mark.parametrize("extra,content", [("metrics.jsonl", '{"step": 0}\n'), ("notes.txt", "mine"),
                                           ("checkpoints/step_00000001.pt", "x")])
def test_a_dir_with_progress_or_foreign_files_is_still_refused(extra, content, tmp_path):
    d = lock_and_empty_checkpoints(tmp_path / "run")
    (d / extra).write_text(content)
    assert not failed_start(d)
    line = one_line_error(["-m", "recipes.pretrain", *TINY, f"run_dir={d}", *QUIET])
    assert "already holds a run" in line and (d / extra).read_text() == content
