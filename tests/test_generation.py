"""The generator engine: its own weights and cache, the exact zero point, KV-cache fidelity,
sampling log-probs, W8A8 inference and the FP8 KV cache."""
import pytest
import torch

from bench.core.errors import BadInput
from bench.generation import Generator, KVCache, truncate_logits
from bench.models.decoder import ModelConfig, Transformer, token_logprobs
from bench.precision import fake_quantize
from bench.precision.linears.inference import InferenceLinear
from bench.precision.plan import select_fp8_modules
from bench.precision.mixed import autocast_context
from bench.rl.mismatch import mismatch_metrics

# Dims divisible by 128 so every recipe (128x128 weight blocks included) runs every Linear.
CFG = ModelConfig(vocab_size=128, d_model=128, n_layers=2, n_heads=4, d_ff=384, max_seq_len=48)
P = 7
FP8_RECIPES = ["fp8_tensorwise", "fp8_blockwise", "fp8_rowwise", "mxfp8", "fp8_delayed"]


@pytest.fixture(scope="module")
def trainer():
    torch.manual_seed(0)
    return Transformer(CFG)


def prompts(n=16, seed=1):
    return torch.randint(3, 100, (n, P), generator=torch.Generator().manual_seed(seed))


def make(trainer, precision="fp32", **kw):
    g = Generator(CFG, precision, "cpu", **kw)
    g.refit(trainer)
    return g


def trainer_logprobs(model, tokens, precision, temperature=1.0):
    """What the trainer recomputes: one full forward in its precision, fp32 log-softmax at T."""
    with torch.no_grad(), autocast_context(precision, "cpu"):
        logits = model(tokens[:, :-1])
    return token_logprobs(logits[:, P - 1:], tokens[:, P:], temperature)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_kv_cache_decoding_matches_full_recompute_in_fp32(trainer, temperature):
    g = make(trainer, "fp32")
    a = g.generate(prompts(), 16, temperature=temperature, seed=0, use_kv_cache=True)
    b = g.generate(prompts(), 16, temperature=temperature, seed=0, use_kv_cache=False)
    assert torch.equal(a.tokens, b.tokens)
    assert (a.logprobs_untruncated - b.logprobs_untruncated).abs().max() < 1e-5
    assert (a.logprobs - b.logprobs).abs().max() < 1e-5


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 20)])
def test_same_precision_full_recompute_is_bitwise_the_trainers_forward(trainer, precision, temperature, top_k):
    ro = make(trainer, precision).generate(prompts(), 12, temperature=temperature, top_k=top_k, eos_id=5,
                                           seed=0, use_kv_cache=False)
    m = ro.response_mask
    lp_t = trainer_logprobs(trainer, ro.tokens, precision, temperature)
    assert (lp_t - ro.logprobs_untruncated)[m].abs().max() == 0
    assert mismatch_metrics(ro.logprobs_untruncated, lp_t, m)["mismatch/token_mult_prob_error"] == 1.0


@pytest.mark.parametrize("fp8", FP8_RECIPES)
def test_fp8_generator_drifts_further_from_the_trainer_than_bf16(trainer, fp8):
    ro = make(trainer, "bf16").generate(prompts(), 12, seed=0)  # bf16 KV-cache decode
    m = ro.response_mask
    lp_t = trainer_logprobs(trainer, ro.tokens, "bf16")
    lp_8 = make(trainer, fp8).score(ro.tokens, P)  # the FP8 engine scores the same tokens
    err_bf16 = (lp_t - ro.logprobs_untruncated)[m].abs().mean()
    err_fp8 = (lp_t - lp_8)[m].abs().mean()
    assert err_fp8 > 2 * err_bf16 > 0


@pytest.mark.parametrize("precision", ["bf16", "fp8_blockwise"])
def test_refit_copies_weights_and_never_shares_storage(precision):
    torch.manual_seed(0)
    trainer = Transformer(CFG)
    g = make(trainer, precision)
    own = list(g.model.state_dict().values()) + list(g.model.buffers())
    assert not {t.data_ptr() for t in trainer.state_dict().values()} & {t.data_ptr() for t in own}
    if precision == "bf16":
        assert all(torch.equal(v, g.model.state_dict()[k]) for k, v in trainer.state_dict().items())
    tokens = torch.cat([prompts(), prompts(seed=2)], 1)
    before = g.score(tokens, P)
    with torch.no_grad():
        for p in trainer.parameters():
            p.mul_(1.5)
    assert torch.equal(g.score(tokens, P), before)  # the trainer's update does not reach it...
    g.refit(trainer)
    assert not torch.equal(g.score(tokens, P), before)  # ...until the next refit


def test_generator_is_an_eval_model_without_grads_and_leaves_global_rng_alone(trainer):
    state = torch.get_rng_state()
    g = make(trainer, "bf16")
    assert torch.equal(torch.get_rng_state(), state)
    assert not g.model.training and not any(p.requires_grad for p in g.model.parameters())
    with pytest.raises(RuntimeError, match="refit"):
        Generator(CFG, "bf16").generate(prompts(), 4)


def test_eos_stops_a_sequence_and_masks_everything_after_it(trainer):
    ro = make(trainer).generate(prompts(), 12, eos_id=5, temperature=3.0, seed=0)
    resp = ro.tokens[:, P:]
    assert ro.tokens.shape == (16, P + 12) and ro.response_mask.shape == (16, 12)
    assert (ro.tokens[:, :P] == prompts()).all()
    stopped = 0
    for i in range(len(resp)):
        hits = (resp[i] == 5).nonzero()
        n_valid = int(ro.response_mask[i].sum())
        assert ro.response_mask[i, :n_valid].all()  # a valid prefix, then nothing
        if len(hits):
            stopped += 1
            assert n_valid == int(hits[0]) + 1  # EOS itself is a valid (scored) token
            assert (resp[i, n_valid:] == 5).all()
        else:
            assert n_valid == 12
    assert stopped > 0
    invalid = ~ro.response_mask
    assert (ro.logprobs[invalid] == 0).all() and (ro.logprobs_untruncated[invalid] == 0).all()


@pytest.mark.parametrize("eos_id", [None, -1])
def test_no_eos_runs_every_sequence_to_max_new_tokens(trainer, eos_id):
    for kv in (True, False):
        ro = make(trainer).generate(prompts(), 9, eos_id=eos_id, seed=0, use_kv_cache=kv)
        assert ro.response_mask.all() and ro.tokens.shape == (16, P + 9)


def test_all_sequences_stopping_ends_the_loop_with_a_fixed_width_rollout(trainer):
    g = make(trainer)
    first = g.generate(prompts(), 1, temperature=0.0).tokens[:, P]
    eos = int(first[0])
    calls = []
    g.model.register_forward_pre_hook(lambda *_: calls.append(1))
    ro = g.generate(prompts()[first == eos], 10, temperature=0.0, eos_id=eos)
    assert len(calls) == 1  # the prefill only: every sequence stopped at its first token
    assert ro.tokens.shape[1] == P + 10
    assert ro.response_mask[:, 0].all() and not ro.response_mask[:, 1:].any()


def test_top_k_one_equals_greedy(trainer):
    g = make(trainer)
    a = g.generate(prompts(), 10, top_k=1, seed=0)
    b = g.generate(prompts(), 10, temperature=0.0)
    assert torch.equal(a.tokens, b.tokens)
    assert (a.logprobs == 0).all()  # the one kept token has probability 1
    assert torch.allclose(a.logprobs_untruncated, b.logprobs_untruncated, atol=1e-6)


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.8), (20, 0.9)])
def test_truncated_logprobs_renormalise_over_the_kept_set(top_k, top_p):
    logits = torch.randn(64, 128, generator=torch.Generator().manual_seed(0)) * 3
    kept = truncate_logits(logits, top_k, top_p)
    keep = torch.isfinite(kept)
    probs = torch.log_softmax(kept, -1).exp()
    assert torch.allclose(probs.sum(-1), torch.ones(64), atol=1e-6) and (probs[~keep] == 0).all()
    if top_k:
        assert (keep.sum(-1) <= top_k).all()
    if top_p < 1:  # nucleus of the top-k distribution: reaches top_p; minus its least likely member, not
        base = truncate_logits(logits, top_k, 1.0).softmax(-1)
        mass = (base * keep).sum(-1)
        least = base.masked_fill(~keep, 2.0).amin(-1)
        assert (mass >= top_p - 1e-6).all() and (mass - least < top_p).all()


def test_untruncated_logprobs_never_exceed_the_truncated_ones(trainer):
    g = make(trainer)
    ro = g.generate(prompts(), 12, top_k=20, top_p=0.9, seed=0)
    m = ro.response_mask
    assert (ro.logprobs[m] >= ro.logprobs_untruncated[m]).all() and (ro.logprobs[m] <= 0).all()
    assert (ro.logprobs[m] > ro.logprobs_untruncated[m]).any()
    plain = g.generate(prompts(), 12, seed=0)  # no truncation: the two fields coincide
    assert torch.equal(plain.logprobs, plain.logprobs_untruncated)


def _teacher_forced_logprobs(g, tokens, fp8_cache):
    """Feed given tokens through the KV cache one at a time (same tokens for both caches)."""
    B, L = tokens.shape
    cache = KVCache(CFG.n_layers, B, CFG.n_heads, L, CFG.d_model // CFG.n_heads, torch.bfloat16, "cpu", fp8=fp8_cache)
    with torch.inference_mode(), g.context():
        out = [g.model(tokens[:, :P], cache=cache, pos=0)[:, -1]]
        out += [g.model(tokens[:, t:t + 1], cache=cache, pos=t)[:, -1] for t in range(P, L - 1)]
    return token_logprobs(torch.stack(out, 1), tokens[:, P:]), cache


def test_fp8_kv_cache_runs_and_stays_close_to_the_bf16_cache(trainer):
    g = make(trainer, "bf16")
    ro = g.generate(prompts(), 16, seed=0)
    lp16, _ = _teacher_forced_logprobs(g, ro.tokens, False)
    lp8, cache = _teacher_forced_logprobs(g, ro.tokens, True)
    assert cache.layer(0).k.dtype == torch.float8_e4m3fn
    diff = (lp16 - lp8).abs()
    assert 0 < diff.mean() < 0.02 and diff.max() < 0.2
    ro8 = make(trainer, "bf16", kv_cache_dtype="fp8").generate(prompts(), 16, seed=0)
    assert 0 <= ro8.kv_saturation_frac < 0.01 and ro8.response_mask.all()


def test_fp8_kv_scales_are_fixed_at_prefill_and_later_tokens_saturate():
    c = KVCache(1, 2, 3, 8, 4, torch.float32, "cpu", fp8=True).layer(0)
    k = torch.rand(2, 3, 5, 4) * torch.tensor([1.0, 2.0, 4.0])[None, :, None, None]
    k_all, _ = c.update(k, k, 0)
    assert c.k_scale.shape == (1, 3, 1, 1)
    assert torch.allclose(c.k_scale.flatten(), 448 / k.abs().amax(dim=(0, 2, 3)))
    assert ((k_all - k).abs() <= k.abs() * 2 ** -4).all()  # E4M3 rounding: half an ulp of 3 bits
    scale = c.k_scale.clone()
    big = torch.full((2, 3, 1, 4), 100.0)
    k_all, _ = c.update(big, big, 5)
    assert torch.equal(c.k_scale, scale) and int(c.saturated) == 2 * 3 * 4 * 2  # k and v
    assert torch.allclose(k_all[:, :, 5], k.abs().amax(dim=(0, 2, 3))[None, :, None].expand(2, 3, 4))


def test_same_seed_gives_the_same_rollout_and_rng_state_resumes_it(trainer):
    g = make(trainer, "bf16")
    a = g.generate(prompts(), 10, seed=3)
    assert torch.equal(a.tokens, g.generate(prompts(), 10, seed=3).tokens)
    state = g.get_rng_state()
    b = g.generate(prompts(), 10)  # continues the engine's own stream
    g.set_rng_state(state)
    assert torch.equal(b.tokens, g.generate(prompts(), 10).tokens)
    rng = torch.Generator().manual_seed(3)
    assert torch.equal(a.tokens, g.generate(prompts(), 10, generator=rng).tokens)


def test_rollout_tensors_can_feed_the_trainers_autograd(trainer):
    ro = make(trainer, "bf16").generate(prompts(), 6, seed=0)
    lp = token_logprobs(trainer(ro.tokens[:, :-1])[:, P - 1:], ro.tokens[:, P:])
    (lp * ro.response_mask).sum().backward()  # an inference-mode tensor here would raise
    assert trainer.lm_head.weight.grad is not None
    trainer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("recipe", FP8_RECIPES)
def test_w8a8_linear_matches_the_fake_quantized_gemm(recipe):
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(256, 384, bias=False)
    torch.nn.init.normal_(lin.weight, generator=gen)
    x = torch.randn(5, 3, 256, generator=gen)
    mod = InferenceLinear.from_linear(lin, recipe)
    # fake_quantize's fp8_delayed is a first step (current amax): what inference, with no history, runs.
    ref = fake_quantize(x.reshape(-1, 256), recipe, "input") @ fake_quantize(lin.weight.detach(), recipe, "weight").t()
    with torch.no_grad():
        y = mod(x)
    assert y.dtype == torch.float32 and y.shape == (5, 3, 384)
    assert torch.allclose(y.reshape(-1, 384), ref, rtol=1e-5, atol=1e-4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert mod(x).dtype == torch.bfloat16
    assert mod.qweight.dtype == torch.float8_e4m3fn and mod.weight_loads == 1  # once, not per call


def test_fp8_delayed_runs_as_current_scaling_with_its_margin_at_inference():
    lin = torch.nn.Linear(128, 128, bias=False)
    mod = InferenceLinear.from_linear(lin, {"name": "fp8_delayed", "margin": 2})
    assert torch.allclose(mod.w_scale, 448 / lin.weight.detach().abs().amax() / 4)
    assert not hasattr(mod, "hist")  # no amax history: nothing to update, nothing shared


@pytest.mark.parametrize("recipe,expect", [("fp8_tensorwise", True), ("fp8_rowwise", True), ("fp8_blockwise", False)])
def test_scaled_mm_runs_the_gemms_whose_scales_factor_out(monkeypatch, recipe, expect):
    calls = []
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: calls.append(1) or real(*a, **k))
    mod = InferenceLinear.from_linear(torch.nn.Linear(128, 128, bias=False), recipe)
    with torch.no_grad():
        mod(torch.randn(16, 128))  # M = 16: the dispatcher's alignment rule (bench.precision.gemm)
    assert bool(calls) == expect


def test_refit_quantizes_each_fp8_weight_once(trainer):
    g = make(trainer, "fp8_blockwise")
    loads = {n: m.weight_loads for n, m in g.quantized_modules().items()}
    g.generate(prompts(), 8, seed=0)
    assert {n: m.weight_loads for n, m in g.quantized_modules().items()} == loads
    g.refit(trainer)
    assert all(m.weight_loads == loads[n] + 1 for n, m in g.quantized_modules().items())


def test_keep_high_precision_by_default_patterns_and_layers(trainer):
    g = make(trainer, "fp8_tensorwise")
    assert g.plan.high_precision_modules == ["lm_head"] and len(g.plan.fp8_modules) == CFG.n_layers * 7
    assert isinstance(g.model.lm_head, torch.nn.Linear)
    keep = {"patterns": ["*.attn.*", "lm_head"], "first_n_layers": 0, "last_n_layers": 0}
    fp8, kept = select_fp8_modules(Transformer(CFG), keep)
    assert all(".mlp." in n for n in fp8) and len(kept) == CFG.n_layers * 4 + 1
    g = make(trainer, {"name": "fp8_tensorwise", "keep_high_precision": keep})
    assert sorted(g.quantized_modules()) == sorted(fp8)
    cfg = {"name": "fp8_blockwise", "keep_high_precision": {"patterns": ["lm_head"], "first_n_layers": 1}}
    g = make(trainer, cfg)
    assert all(n.startswith("layers.1.") for n in g.plan.fp8_modules)


def test_bad_inputs_are_named(trainer):
    with pytest.raises(BadInput, match="valid: fp32"):
        Generator(CFG, "int4")
    with pytest.raises(BadInput, match="kv_cache_dtype"):
        Generator(CFG, "bf16", kv_cache_dtype="int8")
    with pytest.raises(BadInput, match="divisible"):
        Generator(ModelConfig(vocab_size=40, d_model=40, n_heads=4, d_ff=80), "fp8_tensorwise")
    with pytest.raises(ValueError, match="max_seq_len"):
        make(trainer).generate(prompts(), CFG.max_seq_len)


@pytest.mark.parametrize("top_k,top_p", [(20, 1.0), (0, 0.9), (30, 0.8)])
def test_kept_mask_lets_the_trainer_renormalise_over_the_sampled_set(trainer, top_k, top_p):
    """IS weights need the behaviour policy: the trainer's log-probs renormalised over the kept
    set, log p(y) − logsumexp_{v ∈ kept} log p(v), reproduce the generator's `logprobs` (same
    precision, full recompute); the untruncated log-probs differ by −log(kept mass)."""
    T = 0.8
    ro = make(trainer, "fp32").generate(prompts(), 10, temperature=T, top_k=top_k, top_p=top_p, seed=0,
                                        use_kv_cache=False)
    assert ro.kept_mask.shape == (16, 10, CFG.vocab_size) and ro.kept_mask.dtype == torch.bool
    m = ro.response_mask
    with torch.no_grad():
        logp = torch.log_softmax(trainer(ro.tokens[:, :-1])[:, P - 1:].double() / T, -1)
    tok = ro.tokens[:, P:]
    assert ro.kept_mask.gather(-1, tok[..., None])[..., 0][m].all()  # the sampled token was kept
    kept_lse = torch.logsumexp(logp.masked_fill(~ro.kept_mask, float("-inf")), -1)
    renorm = logp.gather(-1, tok[..., None])[..., 0] - kept_lse
    assert (renorm - ro.logprobs.double())[m].abs().max() < 1e-5
    assert (ro.logprobs - ro.logprobs_untruncated)[m].min() > 0  # truncation removed some mass
    if top_k:
        assert (ro.kept_mask.sum(-1)[m] <= top_k).all()


def test_kept_mask_is_none_without_truncation(trainer):
    g = make(trainer, "fp32")
    assert g.generate(prompts(), 4, seed=0).kept_mask is None
    assert g.generate(prompts(), 4, temperature=0.0, top_k=5).kept_mask is None  # greedy: nothing sampled


def test_fp8_kv_saturation_counts_decode_writes_only():
    """The prefill fixes the scales from its own amax, so it cannot saturate; its elements must
    not dilute the fraction: 1 saturating decoded token of 1 → frac 1, whatever the prompt length."""
    cache = KVCache(1, 1, 2, 40, 4, torch.float32, "cpu", fp8=True)
    c = cache.layer(0)
    k = torch.rand(1, 2, 32, 4)
    c.update(k, k, 0)
    assert cache.saturation_frac() == 0.0 and c.written == 0
    big = torch.full((1, 2, 1, 4), 10.0)  # > the prefill amax (< 1): clipped in every element
    c.update(big, big, 32)
    assert cache.saturation_frac() == 1.0 and c.written == 2 * 2 * 4  # k and v of one token


def test_kv_cache_headroom_is_a_generator_setting(trainer):
    g = make(trainer, "bf16", kv_cache_dtype="fp8", kv_cache_headroom=4.0)
    assert g.kv_headroom == 4.0
    c = KVCache(1, 1, 2, 8, 4, torch.float32, "cpu", fp8=True, headroom=4.0).layer(0)
    k = torch.rand(1, 2, 5, 4) + 0.5
    c.update(k, k, 0)
    # s = 448 / (headroom · amax), rounded down in fp32: the prefill amax lands just under 448 / 4
    mapped = c.k_scale.flatten().double() * k.abs().amax(dim=(0, 2, 3)).double()
    assert ((mapped <= 112.0) & (mapped > 112.0 * (1 - 2 ** -22))).all()
    with pytest.raises(BadInput, match="kv_cache_headroom=0.5; valid: a number >= 1"):
        Generator(CFG, "bf16", kv_cache_dtype="fp8", kv_cache_headroom=0.5)


@pytest.mark.parametrize("recipe", FP8_RECIPES)
def test_weights_only_w8a16_multiplies_compute_dtype_activations_by_the_fp8_weight(recipe):
    """float64 reference: y = x_bf16 · ŵᵀ, ŵ the dequantized FP8 weight; activations unquantized."""
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(256, 128, bias=False)
    torch.nn.init.normal_(lin.weight, generator=gen)
    x = torch.randn(6, 256, generator=gen)
    mod = InferenceLinear.from_linear(lin, recipe, weights_only=True)
    w_hat = fake_quantize(lin.weight.detach(), recipe, "weight").double()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = mod(x)
    ref = x.to(torch.bfloat16).double() @ w_hat.t()
    assert y.dtype == torch.bfloat16
    assert ((y.double() - ref).abs() <= ref.abs() * 2 ** -8 + 1e-3).all()  # bf16 output rounding
    w8a8 = InferenceLinear.from_linear(lin, recipe)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not torch.equal(w8a8(x), y)  # W8A8 also quantizes the activations


def test_generator_weights_only_config_plans_w8a16(trainer):
    g = make(trainer, {"name": "fp8_rowwise", "weights_only": True})
    assert g.plan.weights_only and g.plan.summary()["weights_only"] is True
    assert all(m.weights_only for m in g.quantized_modules().values())
