"""model=hf: tiny Llama / Qwen2 / Qwen3 built in-process behave as the built-in model does in the
harness: planner names, generator parity, KV cache, FP8 generator mismatch, save_pretrained dirs."""
import re

import pytest
import torch

pytest.importorskip("transformers")

from bench.config.schema import ModelConfig
from bench.core.errors import BadInput
from bench.generation import Generator
from bench.models.decoder import token_logprobs
from bench.models import build_model, load_tokenizer, resolve
from bench.precision.mixed import autocast_context
from bench.precision.plan import select_fp8_modules
from bench.rl.mismatch import mismatch_metrics
from bench.tasks import build_task
from hf_dirs import char_tokenizer  # noqa: E402,F401  (one builder; test_arith/test_tasks import it from here)

ARCHS = ("llama", "qwen2", "qwen3")


def tiny(arch: str, **kw) -> ModelConfig:
    return ModelConfig(name="hf", kind="hf", arch=arch, n_layers=2, n_kv_heads=2, **kw)


def trained(cfg: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg)


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_linears_sit_under_builtin_names_and_lm_head_stays_high_precision(arch):
    model = build_model(tiny(arch))
    fp8, kept = select_fp8_modules(model, {"patterns": ["lm_head"], "first_n_layers": 1, "last_n_layers": 0})
    assert kept == [n for n in kept if n.startswith("layers.0.")] + ["lm_head"]
    assert "layers.1.self_attn.q_proj" in fp8 and "layers.1.mlp.down_proj" in fp8 and len(fp8) == 7
    assert list(model.state_dict())[0] == "embed.weight" and len(model.layers) == 2


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cache_decode_equals_full_recompute_in_fp32(arch):
    cfg = tiny(arch)
    model = trained(cfg)
    prompts = torch.randint(3, 128, (4, 7), generator=torch.Generator().manual_seed(1))
    outs = []
    for use_cache in (True, False):
        gen = Generator(cfg, "fp32")
        gen.refit(model)
        outs.append(gen.generate(prompts, 12, seed=3, use_kv_cache=use_cache))
    assert torch.equal(outs[0].tokens, outs[1].tokens)
    assert (outs[0].logprobs - outs[1].logprobs).abs().max() <= 1e-5


def _mismatch(cfg, precision: str) -> float:
    model = trained(cfg)
    gen = Generator(cfg, precision)
    gen.refit(model)
    prompts = torch.randint(3, 128, (8, 6), generator=torch.Generator().manual_seed(2))
    ro = gen.generate(prompts, 10, seed=5, use_kv_cache=False)
    with torch.no_grad(), autocast_context("bf16", "cpu"):
        lp_old = token_logprobs(model(ro.tokens[:, :-1])[:, 5:], ro.tokens[:, 6:])
    return mismatch_metrics(ro.logprobs_untruncated, lp_old, ro.response_mask)["mismatch/token_mult_prob_error"]


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_generator_without_kv_cache_is_bitwise_the_bf16_trainer(arch):
    assert _mismatch(tiny(arch), "bf16") == 1.0


def test_fp8_generator_disagrees_with_the_bf16_trainer():
    # Llama: bias-free projections (the inference engine's FP8 Linear carries no bias).
    assert _mismatch(tiny("llama"), "fp8_tensorwise") > 1.0


def test_fp8_kv_cache_quantizes_on_write_in_the_hf_attention():
    cfg = tiny("qwen3")
    model = trained(cfg)
    gen = Generator(cfg, "bf16", kv_cache_dtype="fp8")
    gen.refit(model)
    ro = gen.generate(torch.randint(3, 128, (2, 6)), 8, seed=0)
    ref = Generator(cfg, "bf16")
    ref.refit(model)
    assert not torch.equal(ro.logprobs, ref.generate(ro.tokens[:, :6], 8, seed=0).logprobs)


def test_save_pretrained_directory_loads_via_model_path_with_its_tokenizer(tmp_path):
    tok = char_tokenizer()
    # Room above the tokenizer: a reload adds "<|endoftext|>" as id 98 (the vocabulary check refuses
    # a model whose embedding stops short of an id the tokenizer can emit).
    cfg = tiny("qwen2", vocab_size=128)
    model = trained(cfg)
    model.hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded_cfg = resolve(ModelConfig(name="hf", kind="hf", path=str(tmp_path)))
    assert (loaded_cfg.arch, loaded_cfg.n_layers, loaded_cfg.n_kv_heads, loaded_cfg.vocab_size) == ("qwen2", 2, 2, 128)
    loaded = build_model(loaded_cfg)
    idx = torch.randint(3, 98, (2, 9))
    assert torch.equal(loaded(idx), model(idx))
    task = build_task({"name": "arith"}, load_tokenizer(loaded_cfg))
    p = task.problems("train", 1, 0)[0]
    assert task.completion_text(torch.tensor(tok.encode(p.answer, add_special_tokens=False) + [2, 5])) == p.answer


def test_loading_a_local_checkpoint_twice_prints_no_progress_bar(tmp_path, capfd):
    """The trainer and the generator each load model.path: transformers' "Loading weights" tqdm
    bar printed once per load (twice a run) between the harness's own lines."""
    import transformers

    from hf_dirs import write_model

    cfg = resolve(ModelConfig(name="hf", kind="hf", path=str(write_model(tmp_path / "m"))))
    transformers.utils.logging.enable_progress_bar()  # as a fresh process starts, whatever ran before
    capfd.readouterr()
    for _side in ("trainer", "generator"):
        build_model(cfg)
    err = capfd.readouterr().err
    assert err.count("Loading weights") == 0, err


def test_model_hf_without_path_or_arch_is_one_line_of_bad_input(tmp_path):
    with pytest.raises(BadInput, match="model.path=DIR .* or model.arch"):
        resolve(ModelConfig(kind="hf"))
    with pytest.raises(BadInput, match="holds no config.json"):
        resolve(ModelConfig(kind="hf", path=str(tmp_path)))
    with pytest.raises(BadInput, match="model.arch='gpt2'; valid: llama, qwen2, qwen3"):
        build_model(ModelConfig(kind="hf", arch="gpt2"))


def test_fused_expert_weights_that_are_not_linear_are_refused():
    from bench.models.hf import refuse_non_linear

    experts = torch.nn.Module()
    experts.gate_up_proj = torch.nn.Parameter(torch.zeros(4, 8, 16))
    root = torch.nn.Module()
    root.add_module("experts", experts)
    with pytest.raises(BadInput, match="module experts .* not nn.Linear"):
        refuse_non_linear(root)


@pytest.mark.parametrize("overrides,message", [
    (["model=hf", "model.path=/no/such/dir"], "model.path='/no/such/dir' holds no config.json"),
    (["model=hf", "model.arch=gpt2"], "model.arch='gpt2'; valid: llama, qwen2, qwen3"),
    (["model.arch=llama"], "model.arch='llama' is a model=hf key"),
    (["model=hf", "model.n_kv_heads=3"], "model.n_kv_heads=3 must divide model.n_heads=4"),
    (["model=hf", "model.kind=jax"], "model.kind='jax'; valid: builtin, hf"),
    (["task=arith"], "task arith needs sequences of 120 tokens; model.max_seq_len=96"),
])
def test_bad_model_settings_are_one_line_before_compute(overrides, message):
    from helpers import compose_cfg

    from bench.config.validate import validate

    with pytest.raises(BadInput, match=re.escape(message)):
        validate(compose_cfg("pretrain", overrides), "pretrain", dirs=False)


def test_model_hf_config_validates_and_builds_the_meta_model():
    from helpers import compose_cfg

    from bench.config.validate import validate

    checked = validate(compose_cfg("grpo", ["model=hf", "model.arch=qwen3", "task=arith", "model.max_seq_len=128",
                                            "generator_precision=fp8_blockwise"]), "grpo", dirs=False)
    assert checked.model.kind == "hf" and checked.task.name == "arith"


@pytest.mark.parametrize("arch", ARCHS)
def test_attribution_sites_on_hf_name_the_block_where_fp8_is_planted(arch):
    """The HF adapter exposes DESIGN §11's sites (the residual stream after attention is the input
    of post_attention_layernorm): exact kernels, bf16 both sides, FP8 only in layer 1's MLP ->
    every earlier site agrees bitwise and layer 1's MLP is the first divergent site."""
    from bench.generation.attribution import attribute, site_names

    cfg = tiny(arch)
    model = trained(cfg)
    prec = {"name": "fp8_blockwise", "keep_high_precision": {
        "patterns": ["lm_head", "layers.0.*", "layers.1.self_attn.*"], "first_n_layers": 0, "last_n_layers": 0}}
    g = Generator(cfg, prec, "cpu")
    g.refit(model)
    prompts = torch.randint(3, 128, (4, 6), generator=torch.Generator().manual_seed(1))
    ro = g.generate(prompts, 5, seed=3, use_kv_cache=False)
    rec = attribute(model, lambda: autocast_context("bf16", "cpu"), g, ro.tokens, ro.response_mask, 6,
                    use_kv_cache=False, temperature=1.0)
    rows = {r["site"]: r["rel_diff"] for r in rec["sites"]}
    assert [r["site"] for r in rec["sites"]] == site_names(2)
    assert rec["first_divergent"] == "layers.1.mlp"
    assert all(rows[n] == 0.0 for n in ("embed", "layers.0.attn", "layers.0.mlp", "layers.1.attn"))
    assert rows["layers.1.mlp"] > 1e-9


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("switch", ["norm_in_compute_dtype", "rope_in_compute_dtype", "split_kv"])
def test_norm_rope_and_split_kv_kernel_switches_move_the_hf_bf16_mismatch_above_one(arch, switch):
    """Each switch alone, on an HF model, no KV cache: the bf16 generator is no longer the bf16
    trainer bitwise (the exact zero point is the test above). Norm gains made non-unit first: with
    gains of exactly 1, vLLM's rounding points (bf16(x·rsqrt), times a unit gain) equal what the
    autocast trainer's fp32 norm feeding a bf16 GEMM computes, bit for bit."""
    import copy
    cfg = tiny(arch)
    model = copy.deepcopy(trained(cfg))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    g = Generator(cfg, "bf16", kernels={switch: True})
    g.refit(model)
    prompts = torch.randint(3, 128, (8, 6), generator=torch.Generator().manual_seed(2))
    ro = g.generate(prompts, 10, seed=5, use_kv_cache=False)
    with torch.no_grad(), autocast_context("bf16", "cpu"):
        lp_t = token_logprobs(model(ro.tokens[:, :-1])[:, 5:], ro.tokens[:, 6:])
    tmpe = mismatch_metrics(ro.logprobs_untruncated, lp_t, ro.response_mask)["mismatch/token_mult_prob_error"]
    assert tmpe > 1.0


@pytest.mark.parametrize("arch", ARCHS)
def test_split_kv_attention_on_hf_is_the_softmax_in_fp32(arch):
    """In fp32 the flash-decoding emulation is exact softmax algebra: with the KV cache (prefill,
    then one-token decode steps) its log-probs match the sdpa generator's within 1e-5."""
    cfg = tiny(arch)
    model = trained(cfg)
    prompts = torch.randint(3, 128, (4, 7), generator=torch.Generator().manual_seed(1))
    lps = []
    for kernels in (None, {"split_kv": True, "kv_chunk": 3}):
        g = Generator(cfg, "fp32", kernels=kernels)
        g.refit(model)
        lps.append(g.generate(prompts, 12, seed=3, use_kv_cache=True).logprobs_untruncated)
    assert torch.allclose(lps[0], lps[1], atol=1e-5, rtol=0)
