"""FP8 recipes inside training: every recipe runs, engines agree, stress makes delayed scaling
overflow while current scaling does not, fallback switches modules, fp16 skips are events."""
import dataclasses
import json

import pytest
import torch

from bench.precision import RECIPES, ReferenceLinear as ReferenceFP8Linear
from helpers import read_jsonl, run_in_process

TINY = ["model.n_layers=2", "batch_size=16", "eval_problems=16"]


@pytest.mark.parametrize("recipe", list(RECIPES) + ["fp16"])
def test_every_recipe_trains_a_few_steps_with_the_reference_engine(recipe, tmp_path):
    extra = [] if recipe == "fp16" else ["precision.engine=reference"]
    assert run_in_process("pretrain", TINY + [f"precision={recipe}", *extra, "steps=4", "eval_every=4",
                                              "monitor.interval=2", f"run_dir={tmp_path}"]) == 0
    m = read_jsonl(tmp_path / "metrics.jsonl")
    assert all(torch.isfinite(torch.tensor(x["train/loss"])) for x in m)
    if recipe != "fp16":
        assert "numerics/layers.0.mlp.up/input/sqnr_db" in m[0] and "numerics/overflow_frac_max" in m[2]
        assert json.loads((tmp_path / "summary.json").read_text())["engines"] == {"precision": "reference"}


def test_stress_outlier_overflows_delayed_scaling_but_not_current_scaling(tmp_path):
    stress = ["stress=outlier", "stress.module=layers.1.mlp.down", "stress.from_step=6", "monitor.interval=1",
              "steps=10", "eval_every=10"]
    kinds = {}
    for recipe in ("fp8_delayed", "fp8_tensorwise"):
        d = tmp_path / recipe
        assert run_in_process("pretrain", TINY + stress + [f"precision={recipe}", "precision.engine=reference", f"run_dir={d}"]) == 0
        kinds[recipe] = [(e["kind"], e["where"], e["step"]) for e in read_jsonl(d / "events.jsonl")]
    assert ("overflow", "layers.1.mlp.down/input", 6) in kinds["fp8_delayed"]
    assert not [k for k in kinds["fp8_tensorwise"] if k[0] == "overflow"]


def test_fallback_policy_switches_the_overflowing_module_to_bf16_and_completes(tmp_path):
    args = TINY + ["stress=outlier", "stress.module=layers.1.mlp.down", "stress.from_step=6", "monitor.interval=1",
                   "steps=10", "eval_every=10", "precision=fp8_delayed", "policy=fallback", f"run_dir={tmp_path}"]
    assert run_in_process("pretrain", args) == 0
    ev = read_jsonl(tmp_path / "events.jsonl")
    assert {"step": 6, "kind": "fallback", "where": "layers.1.mlp.down", "value": 1.0, "threshold": 0.0,
            "action": "fallback"} in ev
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"
    ck = torch.load(sorted((tmp_path / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    assert "layers.1.mlp.down" in ck["trainer"]["fallbacks"]


def test_halt_policy_marks_the_run_diverged_and_exits_1(tmp_path):
    args = TINY + ["stress=outlier", "stress.module=layers.1.mlp.down", "stress.from_step=6", "monitor.interval=1",
                   "steps=10", "eval_every=10", "precision=fp8_delayed", "policy=halt", f"run_dir={tmp_path}"]
    assert run_in_process("pretrain", args) == 1
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"
    assert read_jsonl(tmp_path / "events.jsonl")[-1]["kind"] == "halt"


def test_fp16_loss_scaler_skips_are_skip_step_events(tmp_path):
    args = TINY + ["precision=fp16", "precision.loss_scale.init_scale=1e38", "steps=3", "eval_every=3",
                   f"run_dir={tmp_path}"]
    assert run_in_process("pretrain", args) == 0
    ev = read_jsonl(tmp_path / "events.jsonl")
    assert ev and ev[0]["kind"] == "skip_step" and ev[0]["where"] == "loss_scaler"
    m = read_jsonl(tmp_path / "metrics.jsonl")
    assert m[1]["train/loss_scale"] < 1e38


@pytest.mark.parametrize("scaling", ["tensorwise", "rowwise"])
def test_reference_and_torchao_agree(scaling):
    dataclasses_cfg = pytest.importorskip("torchao.float8")
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 128, bias=False)
    ao = torch.nn.Sequential(torch.nn.Linear(256, 128, bias=False))
    ao[0].weight.data.copy_(lin.weight.data)
    cfg = dataclasses.replace(Float8LinearConfig.from_recipe_name(scaling), emulate=True)
    convert_to_float8_training(ao, config=cfg)
    ref = ReferenceFP8Linear.from_linear(lin, f"fp8_{scaling}", "l")
    x = torch.randn(64, 256) * torch.logspace(-2, 1, 256)
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yr = ao(xa), ref(xr)
    g = torch.randn_like(ya)
    ya.backward(g)
    yr.backward(g)
    rel = lambda a, b: float((a - b).norm() / b.norm())
    assert rel(yr, ya) < 1e-6
    assert rel(xr.grad, xa.grad) < 1e-6
    assert rel(lin.weight.grad, ao[0].weight.grad) < 1e-6


def test_delayed_scaling_overflow_is_an_event_on_the_step_it_happens_between_sampled_steps(tmp_path):
    """monitor.interval=25 samples steps 0 and 25 only; the outlier appears at step 6. The clamp
    counts of every cast make it an overflow event at step 6 anyway (issue 11, defect 8)."""
    args = TINY + ["stress=outlier", "stress.module=layers.1.mlp.down", "stress.from_step=6", "stress.growth=1.0",
                   "monitor.interval=25", "steps=8", "eval_every=8", "precision=fp8_delayed",
                   "precision.engine=reference", f"run_dir={tmp_path}"]
    assert run_in_process("pretrain", args) == 0
    ev = [(e["kind"], e["where"], e["step"]) for e in read_jsonl(tmp_path / "events.jsonl")]
    assert ("overflow", "layers.1.mlp.down/input", 6) in ev
    m = read_jsonl(tmp_path / "metrics.jsonl")
    assert "numerics/overflow_frac_max" not in m[6]  # the full statistics stay on sampled steps


def test_mxfp8_default_rounding_does_not_fall_back_at_step_0(tmp_path):
    """With `floor` Gaussian data saturates ~0.9 % of MX elements by design and policy=fallback
    switched every FP8 Linear back to bf16 at step 0; `rceil` (the default) never saturates."""
    args = TINY + ["precision=mxfp8", "precision.engine=reference", "policy=fallback", "monitor.interval=1",
                   "steps=2", "eval_every=2", f"run_dir={tmp_path}"]
    assert run_in_process("pretrain", args) == 0
    assert not [e for e in read_jsonl(tmp_path / "events.jsonl") if e["kind"] in ("fallback", "overflow")]
