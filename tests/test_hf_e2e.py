"""model=hf end to end through the recipes (tiny random-weight Llama / Qwen3 on CPU)."""
import json

import pytest

from helpers import read_jsonl, run_in_process

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

HF = ["model=hf", "model.n_layers=2", "model.n_kv_heads=2"]
SHORT = HF + ["steps=30", "eval_every=30", "checkpoint_every=15", "eval_problems=16", "batch_size=16",
              "monitor.interval=10", "optim.lr=3e-3"]


@pytest.mark.parametrize("precision,arch", [("bf16", "llama"), ("fp8_tensorwise", "qwen3")])
def test_pretrain_on_hf_model_lowers_the_loss(tmp_path, precision, arch):
    d = tmp_path / "run"
    assert run_in_process("pretrain", SHORT + [f"model.arch={arch}", f"precision={precision}", f"run_dir={d}"]) == 0
    losses = [m["train/loss"] for m in read_jsonl(d / "metrics.jsonl")]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    s = json.loads((d / "summary.json").read_text())
    assert s["status"] == "completed"
    if precision != "bf16":
        assert s["precision"]["precision"]["fp8_modules"] == 14 and s["precision"]["precision"]["kept_modules"] == ["lm_head"]


def test_hf_resumed_run_matches_uninterrupted_run_bitwise_in_fp32(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    common = SHORT + ["model.arch=qwen2", "precision=fp32", "steps=20", "checkpoint_every=10", "eval_every=10"]
    assert run_in_process("pretrain", common + [f"run_dir={full}"]) == 0
    assert run_in_process("pretrain", common + [f"run_dir={part}", "stop_after=10"]) == 0
    assert run_in_process("pretrain", common + [f"run_dir={part}", "resume=true"]) == 0
    a = {m["step"]: m["train/loss"] for m in read_jsonl(full / "metrics.jsonl")}
    b = {m["step"]: m["train/loss"] for m in read_jsonl(part / "metrics.jsonl")}
    assert a == b and len(a) == 20


def test_grpo_on_hf_model_bf16_generator_without_kv_cache_has_zero_mismatch(tmp_path):
    d = tmp_path / "run"
    args = HF + ["model.arch=llama", "task=arith", "model.max_seq_len=128", "steps=2", "eval_every=2",
                 "checkpoint_every=2", "eval_problems=4", "warmup.steps=2", "warmup.cache_dir=" + str(tmp_path),
                 "grpo.prompts_per_step=2", "grpo.group_size=2", "grpo.max_new_tokens=4",
                 "trainer_precision=bf16", "generator_precision=bf16", "generator.use_kv_cache=false", "generator/kernels=exact",
                 f"run_dir={d}"]
    assert run_in_process("grpo", args) == 0
    for m in read_jsonl(d / "metrics.jsonl"):
        assert m["mismatch/token_mult_prob_error"] == 1.0


@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
def test_hf_model_under_torchrun_matches_one_process(tmp_path, parallel):
    """FSDP2's per-block wrap finds the HF decoder layers (model.layers); DDP wraps the adapter."""
    from helpers import run_cli, run_torchrun

    args = ["recipes.pretrain", *HF, "model.arch=llama", "batch_size=16", "steps=4", "eval_every=4",
            "checkpoint_every=4", "eval_problems=8", "monitor.interval=2", "logger=disabled", "threads=1",
            "precision=fp32"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli(["-m", *args, f"run_dir={one}"]).returncode == 0
    r = run_torchrun([*args, f"parallel={parallel}", f"run_dir={two}"])
    assert r.returncode == 0, r.stderr[-3000:]
    for x, y in zip(read_jsonl(one / "metrics.jsonl"), read_jsonl(two / "metrics.jsonl"), strict=True):
        assert abs(x["train/loss"] - y["train/loss"]) <= 1e-4 * abs(x["train/loss"])
