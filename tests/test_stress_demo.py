"""The stress demo (README): an outlier under delayed scaling overflows at the step it starts."""
from __future__ import annotations

from helpers import read_jsonl, run_in_process

SITE = "layers.1.mlp.down/input"  # stress.module's input: the cast the outlier lands in
SMALL = ["model.n_layers=2"]  # the README's model, two of its four layers: the site is in the last one


def test_outlier_under_delayed_scaling_overflows_at_the_step_it_starts(tmp_path):
    d = tmp_path / "run"
    code = run_in_process("pretrain", [*SMALL, "stress=outlier", "stress.from_step=4", "precision=fp8_delayed",
                                       "steps=6", "eval_every=100", "eval_problems=4", f"run_dir={d}"])
    assert code == 0
    at_site = [e for e in read_jsonl(d / "events.jsonl") if e["where"] == SITE and e["kind"] == "overflow"]
    assert at_site and at_site[0]["step"] == 4, at_site  # counted on every FP8 cast, not only sampled steps
    assert at_site[0]["value"] > at_site[0]["threshold"]


def test_no_overflow_at_the_outlier_site_without_the_outlier(tmp_path):
    d = tmp_path / "run"
    code = run_in_process("pretrain", [*SMALL, "precision=fp8_delayed", "steps=6", "eval_every=100", "eval_problems=4",
                                       f"run_dir={d}"])
    assert code == 0
    assert not [e for e in read_jsonl(d / "events.jsonl") if e["where"] == SITE]
