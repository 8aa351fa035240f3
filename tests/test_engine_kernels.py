"""FP8 KV cache scales as vLLM sets them, generator.logprobs_mode, and flash-decoding's split
count (bench/models/kvcache.py, bench/generation/generator.py, bench/models/splitkv.py), each
against a float64 / plain-python reimplementation of the engine's definition (peer_spec §2-§4)."""
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bench.core.errors import BadInput
from bench.generation import Generator
from bench.generation.kernels import KernelConfig
from bench.models.decoder import ModelConfig, Transformer, split_kv_attention
from bench.models.kvcache import KVCache, KVScales
from bench.models.splitkv import flash_splits, num_splits_heuristic

CFG = ModelConfig(vocab_size=128, d_model=128, n_layers=2, n_heads=4, d_ff=384, max_seq_len=48)
P = 7


def e4m3(v: np.ndarray) -> np.ndarray:
    """E4M3 (fn) in float64: saturate to ±448, round to nearest even on a 3-bit mantissa, with
    subnormals below 2^-6 on the 2^-9 grid (vLLM's __NV_SATFINITE cast)."""
    v = np.clip(np.asarray(v, np.float64), -448.0, 448.0)
    e = np.floor(np.log2(np.maximum(np.abs(v), 2.0 ** -6)))
    step = 2.0 ** (e - 3)
    return np.round(v / step) * step  # numpy rounds half to even


def k_v(seed, scale=1.0, shape=(2, 3, 5, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale, torch.randn(*shape, generator=g) * scale * 0.5


@pytest.mark.parametrize("mode", ["unit", "calculated"])
def test_fp8_kv_cache_stores_vllms_per_layer_scalar_quantization(mode):
    k, v = k_v(0, scale=3.0)
    c = KVCache(1, 2, 3, 8, 8, torch.float32, "cpu", fp8=True, scales=mode).layer(0)
    k_all, v_all = c.update(k, v, 0)
    kd, vd = k.double().numpy(), v.double().numpy()
    ks = 1.0 if mode == "unit" else np.float32(np.abs(kd).max() / 200.0)
    vs = 1.0 if mode == "unit" else np.float32(np.abs(vd).max() / 100.0)
    assert c.k_scale.dim() == 0 and math.isclose(float(c.k_scale), ks, rel_tol=1e-7)
    assert math.isclose(float(c.v_scale), vs, rel_tol=1e-7)
    want_k = e4m3(np.float32(kd / ks)) * ks  # q = e4m3(fl32(x / s)), dequant q · s
    want_v = e4m3(np.float32(vd / vs)) * vs
    assert np.allclose(k_all.double().numpy(), want_k, rtol=1e-6, atol=0)
    assert np.allclose(v_all.double().numpy(), want_v, rtol=1e-6, atol=0)


def test_calculated_scales_come_from_the_first_batch_and_are_kept():
    store = KVScales(1)
    first = KVCache(1, 2, 3, 8, 8, torch.float32, "cpu", fp8=True, scales="calculated", store=store).layer(0)
    k, v = k_v(1)
    first.update(k, v, 0)
    assert first.written == 0  # the write that sets the scale is not counted
    second = KVCache(1, 2, 3, 8, 8, torch.float32, "cpu", fp8=True, scales="calculated", store=store).layer(0)
    big_k, big_v = k_v(2, scale=50.0)  # a later, larger batch: beyond amax/200 · 448 it saturates
    second.update(big_k, big_v, 0)
    assert torch.equal(second.k_scale, first.k_scale) and torch.equal(second.v_scale, first.v_scale)
    limit_k, limit_v = 448 * float(first.k_scale), 448 * float(first.v_scale)
    want = int((big_k.abs() / first.k_scale > 448).sum() + (big_v.abs() / first.v_scale > 448).sum())
    assert want > 0 and int(second.saturated) == want and second.written == 2 * big_k.numel()
    assert (big_k.abs() > limit_k).sum() + (big_v.abs() > limit_v).sum() == want


def test_unit_scales_count_saturation_on_every_write():
    cache = KVCache(1, 1, 2, 8, 4, torch.float32, "cpu", fp8=True, scales="unit")
    k = torch.full((1, 2, 3, 4), 500.0)
    cache.layer(0).update(k, k * 0.1, 0)
    assert cache.saturation_frac() == 0.5  # all of K beyond 448, none of V


def test_generator_keeps_calculated_scales_across_generate_calls(trainer):
    g = Generator(CFG, "bf16", "cpu", kv_cache_dtype="fp8", kernels={"kv_scales": "calculated"})
    g.refit(trainer)
    pr = torch.randint(3, 100, (8, P), generator=torch.Generator().manual_seed(1))
    g.generate(pr, 6, seed=0)
    kept = [s.clone() for s in g.kv_scales.k]
    g.generate(pr * 0 + 5, 6, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(kept, g.kv_scales.k)) and kept[0].dim() == 0


def test_inference_preset_uses_vllms_default_kv_scales_and_bad_values_are_bad_input():
    preset = OmegaConf.load("conf/generator/kernels/inference.yaml")
    assert preset.kv_scales == "unit" and KernelConfig.kv_scales == "per_head"
    with pytest.raises(BadInput, match="kv_scales='x'; valid: unit, calculated, per_head"):
        KernelConfig(kv_scales="x").check()


@pytest.fixture(scope="module")
def trainer():
    torch.manual_seed(0)
    return Transformer(CFG)


def test_raw_logprobs_are_the_log_softmax_of_the_raw_logits(trainer):
    """vLLM's default raw_logprobs: log_softmax(logits) at T = 1 with no truncation, whatever
    T and top_p the token was sampled with; the sampled tokens are those of `processed`."""
    pr = torch.randint(3, 100, (8, P), generator=torch.Generator().manual_seed(1))
    gens = {m: Generator(CFG, "fp32", "cpu", logprobs_mode=m) for m in ("processed", "raw")}
    for g in gens.values():
        g.refit(trainer)
    ro = {m: g.generate(pr, 8, temperature=0.7, top_p=0.9, seed=0, use_kv_cache=False) for m, g in gens.items()}
    assert torch.equal(ro["raw"].tokens, ro["processed"].tokens) and ro["raw"].kept_mask is None
    with torch.no_grad():
        logits = trainer(ro["raw"].tokens[:, :-1])[:, P - 1:].double()
    want = torch.log_softmax(logits, -1).gather(-1, ro["raw"].tokens[:, P:, None])[..., 0]
    m = ro["raw"].response_mask
    assert torch.allclose(ro["raw"].logprobs.double()[m], want[m], atol=1e-5)
    assert torch.equal(ro["raw"].logprobs, ro["raw"].logprobs_untruncated)
    assert not torch.allclose(ro["processed"].logprobs[m], ro["raw"].logprobs[m], atol=1e-2)
    with pytest.raises(BadInput, match="logprobs_mode='x'; valid: processed, raw"):
        Generator(CFG, "fp32", "cpu", logprobs_mode="x")


def fa2_heuristic(b: int, sms: int, n: int, max_splits: int) -> int:
    """flash_api.cpp num_splits_heuristic, transcribed in plain python (float32 via numpy)."""
    if b >= 0.8 * sms:
        return 1
    max_splits = min(max_splits, sms, n)
    ok = [s == 1 or math.ceil(n / s) != math.ceil(n / (s - 1)) for s in range(1, max_splits + 1)]
    eff = [np.float32(b * s) / np.float32(sms) for s in range(1, max_splits + 1)]
    eff = [e / np.float32(math.ceil(e)) if good else np.float32(0) for e, good in zip(eff, ok)]
    best = max(eff)
    return next((s for s, (e, good) in enumerate(zip(eff, ok), 1) if good and e >= np.float32(0.85) * best), 1)


def test_split_count_is_flashattentions_heuristic():
    for b in range(1, 300, 7):
        for n in (1, 2, 5, 6, 13, 64, 200):
            assert num_splits_heuristic(b, 264, n) == fa2_heuristic(b, 264, n, 128), (b, n)
    assert flash_splits(64, 4, 1, 96, 16, 132) == 1        # 256 tiles fill 0.8 x 264 slots
    assert flash_splits(2, 4, 1, 96, 16, 132) == 6         # a small batch splits its 6 key blocks


def test_batch_dependent_split_count_changes_a_tokens_numerics():
    """The same query row attended in a batch of 2 and of 64: FlashAttention picks 6 splits vs 1,
    and the bf16 output differs; with a fixed chunking (batch_invariant) it does not."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(64, 4, 1, 32, generator=g).bfloat16()
    k = torch.randn(64, 4, 96, 32, generator=g).bfloat16() * 3
    v = torch.randn(64, 4, 96, 32, generator=g).bfloat16()
    def att(B, batch_dependent):
        s = flash_splits(B, 4, 1, 96, 16, 132) if batch_dependent else None
        return split_kv_attention(q[:B], k[:B], v[:B], 95, 16, s)[:2]
    assert torch.equal(att(2, False), att(64, False))
    small, large = att(2, True), att(64, True)
    assert torch.equal(small, att(2, False)) and not torch.equal(small, large)
    exact = torch.softmax(q.double()[:2] @ k.double()[:2].transpose(-1, -2) / math.sqrt(32), -1) @ v.double()[:2]
    assert torch.allclose(large.double(), exact, atol=2e-2)  # both are attention, up to bf16 rounding
