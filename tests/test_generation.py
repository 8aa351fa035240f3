"""The generator engine: its own weights and cache, exact zero point, KV-cache fidelity."""
import pytest
import torch

from bench.generation import Generator
from bench.model import ModelConfig, Transformer, token_logprobs
from bench.precision.mixed import autocast_context
from bench.rl.mismatch import mismatch_metrics

CFG = ModelConfig(vocab_size=128, d_model=128, n_layers=2, n_heads=4, d_ff=384, max_seq_len=48)


@pytest.fixture(scope="module")
def trainer():
    torch.manual_seed(0)
    return Transformer(CFG)


def prompts(n=16, p=7, seed=1):
    return torch.randint(3, 100, (n, p), generator=torch.Generator().manual_seed(seed))


def trainer_logprobs(model, ro, P, precision, temperature=1.0):
    with torch.no_grad(), autocast_context(precision, "cpu"):
        logits = model(ro.tokens[:, :-1])
    return token_logprobs(logits[:, P - 1:], ro.tokens[:, P:], temperature)


def rollout(trainer, precision, kv, seed=0, **kw):
    g = Generator(CFG, precision, "cpu", kv_cache_dtype=kw.pop("kv_cache_dtype", "auto"))
    g.refit(trainer)
    return g.generate(prompts(), kw.pop("max_new_tokens", 10), generator=torch.Generator().manual_seed(seed),
                      use_kv_cache=kv, **kw)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_precision_full_recompute_gives_token_mult_prob_error_exactly_one(trainer, precision):
    ro = rollout(trainer, precision, kv=False)
    lt = trainer_logprobs(trainer, ro, 7, precision)
    assert torch.equal(lt[ro.response_mask], ro.logprobs_untruncated[ro.response_mask])
    assert mismatch_metrics(ro.logprobs_untruncated, lt, ro.response_mask)["mismatch/token_mult_prob_error"] == 1.0


def test_kv_cache_decoding_matches_full_recompute_in_fp32(trainer):
    a, b = rollout(trainer, "fp32", kv=True), rollout(trainer, "fp32", kv=False)
    assert torch.equal(a.tokens, b.tokens)
    assert (a.logprobs_untruncated - b.logprobs_untruncated).abs().max() < 1e-5


@pytest.mark.parametrize("fp8", ["fp8_tensorwise", "fp8_blockwise", "mxfp8"])
def test_fp8_generator_drifts_further_from_the_trainer_than_bf16(trainer, fp8):
    ro = rollout(trainer, "bf16", kv=True)
    lt = trainer_logprobs(trainer, ro, 7, "bf16")
    g8 = Generator(CFG, fp8, "cpu")
    g8.refit(trainer)
    with torch.no_grad(), g8.context():  # score the same tokens with the FP8 generator
        l8 = token_logprobs(g8.model(ro.tokens[:, :-1])[:, 6:], ro.tokens[:, 7:])
    m = ro.response_mask
    assert (lt - l8)[m].abs().mean() > (lt - ro.logprobs_untruncated)[m].abs().mean()


def test_refit_copies_weights_and_never_shares_storage(trainer):
    g = Generator(CFG, "bf16", "cpu")
    g.refit(trainer)
    t, o = trainer.state_dict(), g.model.state_dict()
    assert all(torch.equal(t[k], o[k]) for k in g.base_keys)
    assert not {v.data_ptr() for v in t.values()} & {v.data_ptr() for v in o.values()}
    before = o["lm_head.weight"].clone()
    with torch.no_grad():
        trainer.lm_head.weight.add_(1.0)
    assert torch.equal(g.model.state_dict()["lm_head.weight"], before)
    with torch.no_grad():
        trainer.lm_head.weight.sub_(1.0)


def test_eos_stops_a_sequence_and_masks_everything_after_it(trainer):
    ro = rollout(trainer, "fp32", kv=True, max_new_tokens=12, eos_id=5, temperature=3.0)
    resp = ro.tokens[:, 7:]
    for i in range(len(resp)):
        hits = (resp[i] == 5).nonzero()
        n_valid = int(ro.response_mask[i].sum())
        if len(hits):
            assert n_valid == int(hits[0]) + 1  # EOS itself is a valid (scored) token
            assert (resp[i, n_valid:] == 5).all()
        else:
            assert n_valid == resp.shape[1]


def test_top_k_one_equals_greedy(trainer):
    a = rollout(trainer, "fp32", kv=True, top_k=1)
    b = rollout(trainer, "fp32", kv=True, temperature=0.0)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.allclose(a.logprobs[a.response_mask], torch.zeros(()).expand(int(a.response_mask.sum())))


def test_truncated_logprobs_renormalise_and_bound_the_untruncated_ones(trainer):
    ro = rollout(trainer, "fp32", kv=True, top_k=20, top_p=0.9)
    m = ro.response_mask
    assert (ro.logprobs[m] >= ro.logprobs_untruncated[m] - 1e-6).all()
    assert (ro.logprobs[m] <= 0).all()


def test_fp8_kv_cache_runs_and_stays_close_to_the_bf16_cache(trainer):
    a = rollout(trainer, "bf16", kv=True, temperature=0.0)
    b = rollout(trainer, "bf16", kv=True, temperature=0.0, kv_cache_dtype="fp8")
    m = a.response_mask & b.response_mask
    assert (a.logprobs_untruncated - b.logprobs_untruncated)[m].abs().mean() < 0.1


def test_same_seed_gives_the_same_rollout(trainer):
    assert torch.equal(rollout(trainer, "bf16", kv=True, seed=3).tokens, rollout(trainer, "bf16", kv=True, seed=3).tokens)
