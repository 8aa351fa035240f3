"""wandb mirrors the run (offline here: no network) and can never stop it."""
import json

import pytest

from helpers import read_jsonl, run_in_process

pytestmark = pytest.mark.slow  # end-to-end runs: the fast loop is -m "not slow"

SHORT = ["model.n_layers=2", "steps=6", "eval_every=3", "checkpoint_every=3", "eval_problems=16", "batch_size=16",
         "monitor.interval=3"]


# run_in_process prepends logger=disabled; these later overrides win.
OFFLINE = ["logger.wandb.mode=offline", "logger.progress=false", "sweep=mysweep"]


def test_offline_run_mirrors_metrics_into_one_wandb_run_that_resume_continues(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    d = tmp_path / "run"
    assert run_in_process("pretrain", SHORT + OFFLINE + [f"run_dir={d}", "stop_after=3"]) == 0
    run_id = (d / "wandb" / "fp8bench_run_id").read_text()
    assert run_in_process("pretrain", SHORT + OFFLINE + [f"run_dir={d}", "resume=true"]) == 0
    assert (d / "wandb" / "fp8bench_run_id").read_text() == run_id  # the same wandb run, continued
    runs = list((d / "wandb").glob("offline-run-*"))
    assert runs and all(r.name.endswith(run_id) for r in runs)
    assert json.loads((d / "summary.json").read_text())["status"] == "completed"


def test_wandb_init_failure_leaves_the_run_and_its_jsonl_intact(tmp_path, monkeypatch):
    import wandb

    def outage(*a, **k):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", outage)
    d = tmp_path / "run"
    assert run_in_process("pretrain", SHORT + OFFLINE + [f"run_dir={d}"]) == 0
    assert [m["step"] for m in read_jsonl(d / "metrics.jsonl")] == list(range(6))


def test_wandb_log_failure_mid_run_drops_the_sink_and_training_continues(tmp_path, monkeypatch):
    calls = {"n": 0}

    class FlakyRun:
        id = "flaky"

        def define_metric(self, *a, **k):
            pass

        def log(self, record):
            calls["n"] += 1
            raise ConnectionError("wandb backend gone")

        def finish(self, **k):
            pass

    import wandb
    monkeypatch.setattr(wandb, "init", lambda *a, **k: FlakyRun())
    d = tmp_path / "run"
    assert run_in_process("pretrain", SHORT + OFFLINE + [f"run_dir={d}"]) == 0
    assert calls["n"] == 1  # failed once, then the sink was dropped
    assert [m["step"] for m in read_jsonl(d / "metrics.jsonl")] == list(range(6))
