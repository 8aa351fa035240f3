"""End-to-end pretrain runs on CPU: the run directory, learning, and exact resume."""
import json

import pytest
import torch

from helpers import read_jsonl, run_in_process

pytestmark = pytest.mark.slow  # end-to-end runs: the fast loop is -m "not slow"

SHORT = ["model.n_layers=2", "steps=24", "eval_every=12", "checkpoint_every=12", "eval_problems=32", "batch_size=16",
         "monitor.interval=4"]


def test_short_run_writes_every_run_dir_file_with_contract_names(tmp_path):
    d = tmp_path / "run"
    assert run_in_process("pretrain", SHORT + ["precision=bf16", f"run_dir={d}"]) == 0
    for f in ("config.yaml", "metrics.jsonl", "events.jsonl", "evals.jsonl", "summary.json"):
        assert (d / f).is_file(), f
    metrics = read_jsonl(d / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(24))
    for key in ("wall_s", "train/loss", "train/grad_norm", "train/lr", "train/step_time_s", "train/tokens_per_s"):
        assert key in metrics[0]
    evals = read_jsonl(d / "evals.jsonl")
    assert [e["step"] for e in evals] == [12, 24] and "eval/addition/accuracy" in evals[0] and "eval/loss" in evals[0]
    s = json.loads((d / "summary.json").read_text())
    assert s["status"] == "completed" and s["engines"] == {"precision": "torch.autocast"}
    assert s["versions"]["torch"] == torch.__version__ and "cpu" in s["device"]
    assert list((d / "checkpoints").glob("step_*.pt"))


def test_resumed_run_matches_uninterrupted_run_bitwise_in_fp32(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    common = SHORT + ["precision=fp32"]
    assert run_in_process("pretrain", common + [f"run_dir={full}"]) == 0
    # Stop at step 12 (a checkpoint), then resume to 24.
    assert run_in_process("pretrain", common + [f"run_dir={part}", "stop_after=12"]) == 0
    assert json.loads((part / "summary.json").read_text())["status"] == "preempted"
    assert run_in_process("pretrain", common + [f"run_dir={part}", "resume=true"]) == 0
    a = {m["step"]: m["train/loss"] for m in read_jsonl(full / "metrics.jsonl")}
    b = {m["step"]: m["train/loss"] for m in read_jsonl(part / "metrics.jsonl")}
    assert a == b
    assert read_jsonl(full / "evals.jsonl")[-1]["eval/loss"] == read_jsonl(part / "evals.jsonl")[-1]["eval/loss"]
    kinds = [e["kind"] for e in read_jsonl(part / "events.jsonl")]
    assert kinds.count("resume") == 1
