"""policy=halt catches divergence end to end (issue 12 point 7): lr=10 diverges and halts with a
named divergence event (exit 1, status diverged, earlier checkpoints kept); the same configs at
the default lr raise no divergence event."""
import json

import pytest

from helpers import read_jsonl, run_cli

DIVERGENCE = {"loss_divergence", "grad_divergence", "accuracy_collapse", "reward_collapse", "entropy_collapse"}
QUIET = ["logger=disabled", "threads=1"]
# A small GRPO: 2 layers, 2-token reversal after a 40-step warm-up (some reward to lose).
GRPO = ["model.n_layers=2", "task.length=2", "warmup.steps=40", "eval_problems=32", "eval_every=10",
        "grpo.prompts_per_step=8", "grpo.group_size=8", "steps=30"]


def divergence_events(d):
    return [e for e in read_jsonl(d / "events.jsonl") if e["kind"] in DIVERGENCE]


@pytest.mark.slow
def test_pretrain_at_lr_10_halts_with_a_divergence_event(tmp_path):
    d = tmp_path / "run"
    r = run_cli(["-m", "recipes.pretrain", "optim.lr=10", "policy=halt", "checkpoint_every=5", f"run_dir={d}", *QUIET])
    assert r.returncode == 1, r.stderr[-2000:]
    ev = divergence_events(d)
    assert ev and ev[0]["action"] == "halt" and ev[0]["stat"]
    s = json.loads((d / "summary.json").read_text())
    assert s["status"] == "diverged" and list((d / "checkpoints").glob("step_*.pt"))
    assert s["halted_by"]["kind"] == ev[0]["kind"]


@pytest.mark.slow
def test_pretrain_at_the_default_lr_raises_no_divergence_event(tmp_path):
    d = tmp_path / "run"
    r = run_cli(["-m", "recipes.pretrain", "policy=log", f"run_dir={d}", *QUIET])
    assert r.returncode == 0, r.stderr[-2000:]
    assert divergence_events(d) == []


@pytest.mark.slow
def test_grpo_at_lr_10_halts_with_a_divergence_event(tmp_path):
    d = tmp_path / "run"
    r = run_cli(["-m", "recipes.grpo", *GRPO, "optim.lr=10", "policy=halt", f"warmup.cache_dir={tmp_path}",
                 f"run_dir={d}", *QUIET])
    assert r.returncode == 1, r.stderr[-2000:]
    ev = divergence_events(d)
    assert ev and ev[0]["action"] == "halt" and ev[0]["stat"]
    assert json.loads((d / "summary.json").read_text())["status"] == "diverged"


@pytest.mark.slow
def test_grpo_at_the_default_lr_raises_no_divergence_event(tmp_path):
    d = tmp_path / "run"
    r = run_cli(["-m", "recipes.grpo", *GRPO, "policy=halt", f"warmup.cache_dir={tmp_path}", f"run_dir={d}", *QUIET])
    assert r.returncode == 0, r.stderr[-2000:]
    assert divergence_events(d) == []
