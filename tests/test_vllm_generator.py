"""generator.backend=vllm, phase 2 (DESIGN §13): the built-in decoder reaches vLLM as an HF Llama
with the same function, the validation pass refuses what the engine cannot run with one line
naming the key, and (with the vLLM venv) the engine tracks the trainer's weights refit by refit.

The export is checked against transformers' own LlamaForCausalLM (which imports nothing of the
code under test): same fp32 logits from the same weights. The vLLM tests are slow and skip
unless scripts/setup_vllm.sh has installed .venv-vllm.
"""
import pytest
import torch

from bench.config.validate import validate
from bench.core.errors import BadInput
from bench.generation.vllm_backend import VLLMGenerator, hf_export
from bench.generation.vllm_client import vllm_available
from bench.models.decoder import ModelConfig, Transformer, token_logprobs
from bench.precision.plan import PrecisionPlan
from helpers import compose_cfg

transformers = pytest.importorskip("transformers")
NOT_INSTALLED = "vLLM backend not installed: run scripts/setup_vllm.sh"


def builtin(seed=0, **kw):
    torch.manual_seed(seed)
    # init 0.1: realistic logit scales (near-uniform logits would make any agreement trivial)
    return Transformer(ModelConfig(init_std=0.1, **kw)).eval()


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": True, "rope_theta": 500000.0, "norm_eps": 1e-6,
                                     "n_heads": 2, "d_ff": 256}], ids=["tiny", "tied_theta_eps"])
def test_builtin_decoder_exported_as_hf_llama_computes_the_same_fp32_logits(kw):
    model = builtin(**kw)
    with torch.no_grad():  # non-unit norm weights, so a norm mapped to the wrong place shows up
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    sd, conf = hf_export(model)
    conf = {k: v for k, v in conf.items() if k not in ("transformers_version", "model_type")}
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**conf)).eval()
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"} and (not missing or model.cfg.tie_embeddings)
    idx = torch.randint(0, model.cfg.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(idx), hf(idx).logits.float()
    assert ours.abs().max() > 1.0  # not a near-zero output that any mapping would match
    torch.testing.assert_close(theirs, ours, rtol=0, atol=2e-5)


def hf_model(seed=0):
    from bench.config.schema import ModelConfig as SchemaModelConfig
    from bench.models import build_model

    torch.manual_seed(seed)
    return build_model(SchemaModelConfig(kind="hf", arch="qwen3", n_kv_heads=2, init_std=0.1)).eval()


VLLM = ["generator.backend=vllm"]


@pytest.mark.parametrize("overrides, needle", [
    (["generator.backend=sglang"], "generator.backend='sglang'"),
    (VLLM + ["generator_precision=fp8_blockwise"], "generator_precision=fp8_blockwise with generator.backend=vllm"),
    (VLLM + ["grpo.top_p=0.9"], "grpo.top_p=0.9 with generator.backend=vllm"),
    (VLLM + ["grpo.top_k=5"], "grpo.top_k=5"),
    (VLLM + ["model.qk_norm=true"], "model.qk_norm=true with generator.backend=vllm"),
    (VLLM + ["model.n_heads=8"], "model.d_model/model.n_heads=16"),
    (VLLM + ["generator.use_kv_cache=false"], "generator.use_kv_cache=false"),
    (VLLM + ["attribution.interval=2"], "attribution.interval=2"),
    (VLLM + ["lm_head_fp32=true"], "lm_head_fp32=true"),
], ids=["unknown_backend", "fp8_weights", "top_p", "top_k", "qk_norm", "head_dim", "no_kv_cache",
        "attribution", "lm_head_fp32"])
def test_vllm_backend_refuses_what_the_engine_cannot_run_in_one_line_naming_the_key(overrides, needle):
    with pytest.raises(BadInput) as e:
        validate(compose_cfg("grpo", ["device=cpu", *overrides]), "grpo", dirs=False)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_vllm_backend_passes_validation_where_it_can_run():
    if not vllm_available():
        pytest.skip(NOT_INSTALLED)
    validate(compose_cfg("grpo", ["device=cpu", *VLLM, "generator_precision=bf16"]), "grpo", dirs=False)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["builtin", "hf_qwen3"])
def test_vllm_logprobs_of_fixed_tokens_track_the_trainer_over_three_refits(kind):
    """After each refit the engine's teacher-forced log-probs equal the trainer's current fp32 ones
    within fp32 kernel noise, and are far from the previous weights' (so the reload happened).
    Both kinds: the built-in decoder exported as a Llama, and model=hf (a Qwen3, q/k norms and
    GQA) with its own config and names."""
    if not vllm_available():
        pytest.skip(NOT_INSTALLED)
    model = builtin() if kind == "builtin" else hf_model()
    gen = VLLMGenerator(model.cfg, PrecisionPlan(name="fp32", engine="fp32", side="generator"))
    rng = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, model.cfg.vocab_size, (4, 24), generator=rng)
    P = 8
    try:
        previous = None
        for update in range(4):  # the first weights, then three "updates"
            if update:
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(0.05 * torch.randn(p.shape, generator=rng))
            gen.refit(model)
            with torch.no_grad():
                want = token_logprobs(model(tokens[:, :-1])[:, P - 1:], tokens[:, P:])
            got = gen.score(tokens, P)
            assert (got - want).abs().max() < 1e-4, update
            if previous is not None:
                assert (got - previous).abs().max() > 1e-2, update
            previous = want
        assert gen.refits == 4 and len(gen.sync_s) == 4
    finally:
        gen.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_grpo_with_the_vllm_generator_trains_logs_mismatch_resumes_and_reports(tmp_path):
    """scripts/grpo generator.backend=vllm: three steps, every step's mismatch against the real
    engine and its weight_sync time; stopped after two and resumed, it reproduces the full run's
    rewards and mismatch (sampling seeds are per (seed, step, shard)); compare, baseline and gate
    read the runs like any other."""
    if not vllm_available():
        pytest.skip(NOT_INSTALLED)
    import json

    from helpers import read_jsonl, run_in_process

    common = ["model.n_layers=2", "steps=3", "eval_every=3", "checkpoint_every=1", "eval_problems=8",
              "grpo.prompts_per_step=2", "grpo.group_size=4", "warmup.steps=10", "monitor.interval=0",
              f"warmup.cache_dir={tmp_path / 'cache'}", "trainer_precision=fp32", "generator_precision=fp32",
              "device=cpu", *VLLM]
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_in_process("grpo", common + [f"run_dir={full}"]) == 0
    rows = [m for m in read_jsonl(full / "metrics.jsonl") if "mismatch/token_mult_prob_error" in m]
    assert [m["step"] for m in rows] == [0, 1, 2]
    for m in rows:  # fp32 engine vs fp32 trainer: kernel noise only, but measured, not 1 by construction
        assert abs(m["mismatch/token_mult_prob_error"] - 1) < 1e-3 and m["time/weight_sync_s"] > 0
    summary = json.loads((full / "summary.json").read_text())
    assert summary["engines"]["generator"] == "vllm" and summary["vllm"]["dtype"] in ("float32", "torch.float32")
    assert summary["vllm"]["startup_s"] > 0 and summary["vllm"]["logprobs_mode"] == "processed"
    assert run_in_process("grpo", common + [f"run_dir={part}", "stop_after=2"]) == 0
    assert run_in_process("grpo", common + [f"run_dir={part}", "resume=true"]) == 0
    keys = ("rollout/reward_mean", "mismatch/token_mult_prob_error", "rollout/response_len_mean")
    a = {m["step"]: [m.get(k) for k in keys] for m in read_jsonl(full / "metrics.jsonl")}
    b = {m["step"]: [m.get(k) for k in keys] for m in read_jsonl(part / "metrics.jsonl")}
    assert a == b
    from bench.cli import main as cli_main
    assert cli_main(["compare", str(full), str(part), "-o", str(tmp_path / "report")]) == 0
    base = tmp_path / "baseline.json"
    assert cli_main(["baseline", "record", str(full), "-o", str(base)]) == 0
    # one seed: the gate reads the run and gives a verdict (pass / regression / inconclusive), not bad input
    assert cli_main(["gate", "--baseline", str(base), str(part), "--markdown", str(tmp_path / "gate.md")]) in (0, 1, 3)
    assert (tmp_path / "gate.md").read_text().strip()
