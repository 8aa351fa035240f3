"""End-to-end GRPO runs on CPU: the run directory, every metric name, spike events, exact resume."""
import json

import pytest

from helpers import read_jsonl, run_in_process

pytestmark = pytest.mark.slow  # end-to-end runs: the fast loop is -m "not slow"

# Two layers, four prompts x four samples, a 20-step warm-up cached per test: seconds per run.
SHORT = ["model.n_layers=2", "steps=4", "eval_every=2", "checkpoint_every=2", "eval_problems=16",
         "grpo.prompts_per_step=4", "grpo.group_size=4", "warmup.steps=20", "monitor.interval=2"]

MISMATCH = ["token_mult_prob_error", "gen_kl_k3", "policy_kl_k3", "kl_k1", "js_divergence_error", "logp_abs_diff_mean",
            "logp_abs_diff_max", "prob_abs_diff_mean", "prob_abs_diff_max", "prob_pearson", "chi2_token",
            "chi2_seq", "log_ppl_diff", "log_ppl_abs_diff", "ppl_ratio", "seq_mult_prob_error_mean",
            "seq_mult_prob_error_max"]
IS = [f"raw_{s}" for s in ("mean", "std", "min", "max")] + [f"weight_{s}" for s in ("mean", "std", "min", "max")] + \
     ["ess", "frac_high", "frac_low", "token_masked_frac", "seq_masked_frac", "veto_seq_frac",
      "rollout_is_eff_sample_size"]
RL = ["rollout/reward_mean", "rollout/reward_std", "rollout/response_len_mean", "rl/clip_frac", "rl/entropy",
      "train/lr", "train/step_time_s", "train/tokens_per_s", "train/updates"]
UPDATE = ["train/loss", "train/grad_norm"]  # only on steps where an update ran


def short(tmp_path, *extra):
    return SHORT + [f"warmup.cache_dir={tmp_path / 'cache'}", *extra]


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """Overrides for a warm start that earns some reward (2-token reversal), so updates run;
    the warm-up is cached once for the module."""
    return ["task.length=2", "warmup.steps=40", f"warmup.cache_dir={tmp_path_factory.mktemp('warm')}"]


def test_fp8_generator_run_logs_every_mismatch_is_and_rl_metric_each_step(tmp_path):
    d = tmp_path / "run"
    rc = run_in_process("grpo", short(tmp_path, "generator_precision=fp8_blockwise", "is_correction=tis",
                                      f"run_dir={d}"))
    assert rc == 0
    metrics = read_jsonl(d / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    for m in metrics:
        for key in [f"mismatch/{k}" for k in MISMATCH] + [f"is/{k}" for k in IS] + RL:
            assert key in m, key
        assert all((k in m) == (m["train/updates"] > 0) for k in UPDATE)
        assert "rl/kl_ref" not in m  # kl_coef=0: no reference, nothing measured
        # An FP8 W8A8 generator is not the bf16 trainer: its log-probs must differ.
        assert m["mismatch/token_mult_prob_error"] > 1.0
    evals = read_jsonl(d / "evals.jsonl")
    assert [e["step"] for e in evals] == [0, 2, 4] and "eval/reversal/accuracy" in evals[0]
    samples = read_jsonl(d / "samples.jsonl")
    assert {s["step"] for s in samples} == {2, 4} and {"prompt", "answer", "completion", "reward"} <= set(samples[0])
    summary = json.loads((d / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["engines"]["generator"] == "inference" and summary["engines"]["trainer"] == "torch.autocast"
    assert summary["warmstart"]


def test_mismatch_above_threshold_emits_spike_event_and_worst_sequence_png(tmp_path):
    d = tmp_path / "run"
    rc = run_in_process("grpo", short(tmp_path, "steps=1", "eval_every=1", "generator_precision=fp8_blockwise",
                                      "mismatch_spike_threshold=1.0", f"run_dir={d}"))
    assert rc == 0
    spikes = [e for e in read_jsonl(d / "events.jsonl") if e["kind"] == "mismatch_spike"]
    assert len(spikes) == 1 and spikes[0]["value"] > 1.0 and spikes[0]["threshold"] == 1.0
    assert (d / spikes[0]["where"]).is_file() and spikes[0]["where"].endswith(".png")


def test_cache_free_generator_gives_the_same_fp32_run_as_the_kv_cache(tmp_path):
    """use_kv_cache=false is the reference path; in fp32 the sampled tokens must agree."""
    runs = {}
    for kv in ("true", "false"):
        d = tmp_path / f"kv_{kv}"
        assert run_in_process("grpo", short(tmp_path, "steps=2", "trainer_precision=fp32", "generator_precision=fp32",
                                            f"generator.use_kv_cache={kv}", f"run_dir={d}")) == 0
        runs[kv] = read_jsonl(d / "metrics.jsonl")
    for a, b in zip(runs["true"], runs["false"]):
        assert a["rollout/reward_mean"] == b["rollout/reward_mean"]
        assert a["rollout/response_len_mean"] == b["rollout/response_len_mean"]
        assert a["mismatch/token_mult_prob_error"] == pytest.approx(b["mismatch/token_mult_prob_error"], abs=1e-5)


def test_resumed_grpo_run_matches_uninterrupted_run_bitwise_in_fp32(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    common = short(tmp_path, "trainer_precision=fp32", "generator_precision=fp32")
    assert run_in_process("grpo", common + [f"run_dir={full}"]) == 0
    assert run_in_process("grpo", common + [f"run_dir={part}", "stop_after=2"]) == 0
    assert json.loads((part / "summary.json").read_text())["status"] == "preempted"
    assert run_in_process("grpo", common + [f"run_dir={part}", "resume=true"]) == 0
    keys = ("train/loss", "rollout/reward_mean", "mismatch/token_mult_prob_error")
    a = {m["step"]: [m.get(k) for k in keys] for m in read_jsonl(full / "metrics.jsonl")}
    b = {m["step"]: [m.get(k) for k in keys] for m in read_jsonl(part / "metrics.jsonl")}
    assert a == b


def test_fp8_kv_cache_logs_its_saturation_and_a_plain_cache_does_not(tmp_path):
    logged = {}
    for kv in ("fp8", "auto"):
        d = tmp_path / kv
        assert run_in_process("grpo", short(tmp_path, "steps=2", f"generator.kv_cache_dtype={kv}", f"run_dir={d}")) == 0
        logged[kv] = [m.get("rollout/kv_saturation_frac") for m in read_jsonl(d / "metrics.jsonl")]
    assert all(v is not None and 0.0 <= v <= 1.0 for v in logged["fp8"])
    assert logged["auto"] == [None, None]


def test_kl_to_the_reference_is_zero_before_the_first_update_in_the_trainers_precision(tmp_path, learned):
    """The reference runs in the trainer's precision (bf16 here): at step 0, before any update,
    pi_new == pi_ref exactly, so rl/kl_ref is 0 (an fp32 reference read ~1e-4 here)."""
    d = tmp_path / "run"
    assert run_in_process("grpo", short(tmp_path, "steps=1", "eval_every=1", "grpo.kl_coef=0.1",
                                        "trainer_precision=bf16", f"run_dir={d}", *learned)) == 0
    (m,) = read_jsonl(d / "metrics.jsonl")
    assert m["train/updates"] == 1 and m["rl/kl_ref"] == 0.0


def test_events_carry_the_rollout_step_and_the_optimizer_step(tmp_path, learned):
    """Two minibatches x two epochs: 4 optimizer steps per rollout step. A tiny skip threshold
    makes every update raise an event: each carries the rollout step and its own opt_step."""
    d = tmp_path / "run"
    assert run_in_process("grpo", short(tmp_path, "steps=2", "eval_every=2", "grpo.minibatches=2",
                                        "grpo.ppo_epochs=2", "policy.underflow_frac=0.0", "monitor.interval=1",
                                        "trainer_precision=fp8_tensorwise", f"run_dir={d}", *learned)) == 0
    steps = {m["step"]: m["train/updates"] for m in read_jsonl(d / "metrics.jsonl")}
    ev = [e for e in read_jsonl(d / "events.jsonl") if e["kind"] == "underflow"]
    assert ev and {e["step"] for e in ev} <= set(steps) and sum(steps.values()) > 0
    for s, n in steps.items():
        ops = sorted({e["opt_step"] for e in ev if e["step"] == s})
        assert len(ops) == n  # one distinct optimizer step per update that ran
    assert all(e.get("opt_step") is None for e in read_jsonl(d / "events.jsonl") if e["kind"] == "resume")


@pytest.mark.parametrize("trunc", ["grpo.top_p=0.8", "grpo.top_k=3"])
def test_with_truncated_sampling_identical_policies_get_unit_is_ratios(tmp_path, trunc):
    """fp32 trainer and generator: the same distribution on both sides. The IS ratio of the
    truncated trainer over the truncated behaviour policy is then 1; mixing a truncated side with
    an untruncated one would read 1 / (kept mass) instead."""
    d = tmp_path / "run"
    assert run_in_process("grpo", short(tmp_path, "steps=1", "eval_every=1", "trainer_precision=fp32",
                                        "generator_precision=fp32", trunc, f"run_dir={d}")) == 0
    (m,) = read_jsonl(d / "metrics.jsonl")
    assert abs(m["is/raw_min"] - 1) < 1e-4 and abs(m["is/raw_max"] - 1) < 1e-4
    assert m["mismatch/token_mult_prob_error"] < 1 + 1e-4  # untruncated on both sides: also identical
