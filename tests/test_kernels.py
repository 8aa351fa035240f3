"""Generator kernels (bench/generation/kernels.py) and attribution (bench/generation/attribution.py)."""
import math

import pytest
import torch

from bench.generation.attribution import attribute, compare_sites, site_names, site_stats
from bench.core.errors import BadInput
from bench.generation import Generator
from bench.generation.kernels import (SWITCHES, KernelConfig, per_token_quantize,
                                      split_k_matmul)
from bench.generation.replay import replay
from bench.models.decoder import ModelConfig, Transformer, split_kv_attention, token_logprobs
from bench.precision.mixed import autocast_context
from bench.rl.mismatch import mismatch_metrics

CFG = ModelConfig(vocab_size=128, d_model=128, n_layers=2, n_heads=4, d_ff=384, max_seq_len=48)
P, N = 7, 12
# One non-default value per switch: that switch alone on.
ALONE = {"weights_in_compute_dtype": True, "norm_in_compute_dtype": True, "rope_in_compute_dtype": True,
         "split_k": 4, "split_kv": True, "batch_invariant": False, "fp8_activation_scaling": "per_token"}
INFERENCE = dict(ALONE)


@pytest.fixture(scope="module")
def trainer():
    torch.manual_seed(0)
    m = Transformer(CFG)
    with torch.no_grad():  # larger weights than init: a less uniform, more sensitive distribution
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return m


def rollout(trainer, precision="bf16", kernels=None, use_kv_cache=False, n=16, lm_head_fp32=False):
    g = Generator(CFG, precision, "cpu", kernels=kernels, lm_head_fp32=lm_head_fp32)
    g.refit(trainer)
    prompts = torch.randint(3, 100, (n, P), generator=torch.Generator().manual_seed(1))
    ro = g.generate(prompts, N, temperature=1.0, seed=3, use_kv_cache=use_kv_cache)
    return g, ro


def trainer_lp(model, tokens, precision="bf16"):
    with torch.no_grad(), autocast_context(precision, "cpu"):
        logits = model(tokens[:, :-1])
    return token_logprobs(logits[:, P - 1:], tokens[:, P:])


def tmpe(trainer, ro, precision="bf16"):
    return mismatch_metrics(ro.logprobs_untruncated, trainer_lp(trainer, ro.tokens, precision),
                            ro.response_mask)["mismatch/token_mult_prob_error"]


def test_exact_kernels_without_kv_cache_give_tmpe_exactly_one(trainer):
    _, ro = rollout(trainer, kernels=None)
    assert tmpe(trainer, ro) == 1.0


def test_lm_head_fp32_on_both_sides_keeps_the_exact_zero_point_and_computes_logits_in_fp32(trainer):
    g, ro = rollout(trainer, kernels=None, lm_head_fp32=True)
    trainer.lm_head_fp32 = True
    try:
        assert tmpe(trainer, ro) == 1.0
        with autocast_context("bf16", "cpu"), torch.no_grad():
            sites = {}
            trainer(ro.tokens[:3, :P], sites=sites)
        ref = sites["norm"].double() @ trainer.lm_head.weight.double().t()
        assert torch.allclose(sites["logits"].double(), ref, rtol=1e-5, atol=1e-5)
    finally:
        trainer.lm_head_fp32 = False


@pytest.mark.parametrize("switch", [s for s in SWITCHES if s != "fp8_activation_scaling"])
def test_each_switch_alone_moves_the_bf16_mismatch_above_one(trainer, switch):
    _, ro = rollout(trainer, kernels={switch: ALONE[switch]})
    assert tmpe(trainer, ro) > 1.0


def test_per_token_fp8_activation_scaling_changes_an_fp8_generators_logprobs(trainer):
    _, ro = rollout(trainer, "fp8_blockwise")
    g2, _ = rollout(trainer, "fp8_blockwise", kernels={"fp8_activation_scaling": "per_token"})
    lp2, _ = replay(g2, ro.tokens, P, use_kv_cache=False)
    assert not torch.equal(lp2[ro.response_mask], ro.logprobs_untruncated[ro.response_mask])


def test_inference_preset_with_every_switch_off_equals_exact(trainer):
    import bench.config.schema  # noqa: F401  (registers the schemas compose needs)
    from tests.helpers import compose_cfg
    off = [f"generator.kernels.{k}={str(KernelConfig.__dataclass_fields__[k].default).lower()}" for k in SWITCHES]
    cfg = compose_cfg("grpo", ["generator/kernels=inference", *off])
    assert cfg.generator.kernels.split_kv is False and cfg.generator.kernels.kv_chunk == 16
    _, a = rollout(trainer, kernels=cfg.generator.kernels, use_kv_cache=True)
    _, b = rollout(trainer, kernels=None, use_kv_cache=True)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs_untruncated, b.logprobs_untruncated)
    on = compose_cfg("grpo", ["generator/kernels=inference"]).generator.kernels
    assert all(on[k] != KernelConfig.__dataclass_fields__[k].default for k in SWITCHES)  # the preset: all on


@pytest.mark.parametrize("use_kv_cache", [False, True])
def test_replay_reproduces_the_generated_logprobs_bitwise(trainer, use_kv_cache):
    g, ro = rollout(trainer, "bf16", kernels=INFERENCE | {"fp8_activation_scaling": "recipe"},
                    use_kv_cache=use_kv_cache)
    lp, _ = replay(g, ro.tokens, P, use_kv_cache=use_kv_cache)
    m = ro.response_mask
    assert torch.equal(lp[m], ro.logprobs_untruncated[m])


def test_bad_kernel_values_are_one_line_bad_input():
    for bad in ({"split_k": 0}, {"kv_chunk": 0}, {"fp8_activation_scaling": "tensor"}, {"split_kk": 2}):
        with pytest.raises(BadInput):
            Generator(CFG, "bf16", "cpu", kernels=bad)


def test_split_k_matmul_is_the_sum_of_fp32_partials():
    torch.manual_seed(0)
    x, w = torch.randn(5, 96).bfloat16(), torch.randn(7, 96).bfloat16()
    ref = sum(x[:, i:i + 32].double() @ w[:, i:i + 32].double().t() for i in range(0, 96, 32))
    out = split_k_matmul(x, w, 3)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), ref, rtol=1e-6, atol=1e-5)


def test_split_kv_attention_is_softmax_attention_up_to_rounding():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)
    pos = 6  # queries at 6..9, causal over 10 keys
    s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(8)
    allowed = torch.arange(10)[None, :] <= (pos + torch.arange(4))[:, None]
    ref = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ v.double()
    out = split_kv_attention(q, k, v, pos, chunk=3)
    assert torch.allclose(out.double(), ref, atol=1e-5)


def test_per_token_quantize_scales_each_row_to_448():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [300.0, 1.0, -3.0]])
    q, s = per_token_quantize(x)
    assert s[:, 0].tolist() == [224.0, 1.0, torch.tensor(448.0 / 300.0).item()]  # fp32 division
    assert q.float().abs().amax(-1).tolist() == [448.0, 0.0, 448.0]


def _rel_diff_f64(x, y, mask):
    """DESIGN §11, directly: 1 − 2Σxy / Σ(x² + y²) over masked positions, plain Python floats."""
    sxy = sxx = 0.0
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            if mask[b, t]:
                for a, c in zip(x[b, t].tolist(), y[b, t].tolist()):
                    sxy += a * c
                    sxx += a * a + c * c
    return 1.0 - 2.0 * sxy / sxx


def test_rel_diff_matches_a_float64_implementation_of_the_definition():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4)
    y = x + 1e-3 * torch.randn(3, 5, 4)
    y[0, 0] += 100.0  # a masked-out position must not count
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 0] = False
    rel, mx = site_stats(x, y, mask)
    assert rel == pytest.approx(_rel_diff_f64(x, y, mask), rel=1e-9, abs=1e-15)
    assert mx == pytest.approx(float((x - y)[mask].abs().max()))
    assert site_stats(x, x.clone(), mask) == (0.0, 0.0)


def test_disagreement_planted_in_one_block_is_reported_at_that_site(trainer):
    """Staged FP8 in layer 1's MLP only, exact kernels, bf16 autocast both sides: every site
    before it agrees bitwise."""
    prec = {"name": "fp8_blockwise", "keep_high_precision": {"patterns": ["lm_head", "layers.0.*", "layers.1.attn.*"],
                                                             "first_n_layers": 0, "last_n_layers": 0}}
    g = Generator(CFG, prec, "cpu")
    g.refit(trainer)
    prompts = torch.randint(3, 100, (8, P), generator=torch.Generator().manual_seed(1))
    ro = g.generate(prompts, N, seed=3, use_kv_cache=False)
    rec = attribute(trainer, lambda: autocast_context("bf16", "cpu"), g, ro.tokens, ro.response_mask, P,
                    use_kv_cache=False, temperature=1.0)
    rows = {r["site"]: r["rel_diff"] for r in rec["sites"]}
    assert rec["first_divergent"] == "layers.1.mlp"
    for name in site_names(2)[:site_names(2).index("layers.1.mlp")]:
        assert rows[name] == 0.0
    assert rows["layers.1.mlp"] > 1e-9


def test_compare_sites_names_the_first_site_above_threshold():
    z = torch.zeros(1, 2, 3)
    ts = {n: z + 1 for n in site_names(1)}
    gs = dict(ts)
    gs["layers.0.mlp"] = z + 2
    gs["norm"] = z + 3
    rec = compare_sites(ts, gs, torch.ones(1, 2, dtype=torch.bool), 1)
    assert rec["first_divergent"] == "layers.0.mlp"
    assert [r["site"] for r in rec["sites"]] == site_names(1)
