"""IS under top-k/top-p: the behaviour policy is the truncated distribution actually sampled
from, and the trainer is renormalised over the generator's kept set (float64 references)."""
import math

import pytest
import torch

from bench.generation.generator import sample_step, truncate_logits
from bench.rl.importance import importance_weights
from bench.rl.truncation import kept_logprobs


def direct_truncated_logprob(z, y, kept, T):
    """log( e^{z_y/T} / Σ_{v∈K} e^{z_v/T} ) in float64, one position at a time."""
    zs = [float(v) / T for v in z]
    keep = [i for i, k in enumerate(kept) if k]
    m = max(zs[i] for i in keep)
    return zs[y] - (m + math.log(sum(math.exp(zs[i] - m) for i in keep)))


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    z_gen = 2.0 * torch.randn(3, 4, 11, generator=g)
    z_train = z_gen + 0.3 * torch.randn(3, 4, 11, generator=g)  # the precision gap, exaggerated
    return z_gen, z_train


@pytest.mark.parametrize("top_k,top_p,T", [(0, 0.9, 1.0), (4, 1.0, 0.7), (5, 0.8, 1.3)])
def test_trainer_logprob_renormalised_over_the_kept_set_matches_float64(logits, top_k, top_p, T):
    z_gen, z_train = logits
    kept = torch.isfinite(truncate_logits(z_gen.float() / T, top_k, top_p))
    y = kept.float().argmax(-1)  # some kept token per position
    got = kept_logprobs(z_train, y, kept, T)
    for b in range(3):
        for t in range(4):
            ref = direct_truncated_logprob(z_train[b, t].double(), int(y[b, t]), kept[b, t].tolist(), T)
            assert float(got[b, t]) == pytest.approx(ref, abs=2e-6)


def test_is_ratio_is_the_truncated_trainer_over_the_sampled_distribution(logits):
    """The generator's reported log-prob is log q_g; the weight must be q_t/q_g over the same K.
    The untruncated ratio p_t/p_g (the old IS input) is off by the ratio of the kept masses."""
    z_gen, z_train = logits
    T, top_p = 1.0, 0.9
    B, N, V = z_gen.shape
    rng = torch.Generator().manual_seed(1)
    tok, lp_behav, lp_gen_full, _ = sample_step(z_gen.reshape(B * N, V), T, 0, top_p, rng)
    tok, lp_behav, lp_gen_full = tok.view(B, N), lp_behav.view(B, N), lp_gen_full.view(B, N)
    kept = torch.isfinite(truncate_logits(z_gen / T, 0, top_p))
    mask = torch.ones(B, N, dtype=torch.bool)
    w, _ = importance_weights(lp_behav, kept_logprobs(z_train, tok, kept, T), mask, mode="tis", cap=1e6)
    worst_old = 0.0
    for b in range(B):
        for t in range(N):
            y, k = int(tok[b, t]), kept[b, t].tolist()
            ref = math.exp(direct_truncated_logprob(z_train[b, t].double(), y, k, T)
                           - direct_truncated_logprob(z_gen[b, t].double(), y, k, T))
            assert float(w[b, t]) == pytest.approx(ref, rel=1e-5)
            p_t = torch.log_softmax(z_train[b, t].double() / T, -1)[y]
            worst_old = max(worst_old, abs(math.exp(float(p_t - lp_gen_full[b, t])) / ref - 1))
    assert worst_old > 1e-2  # the untruncated ratio is biased by the kept mass


def test_without_truncation_nothing_changes(logits):
    z_gen, _ = logits
    all_kept = torch.ones_like(z_gen, dtype=torch.bool)
    y = z_gen.argmax(-1)
    torch.testing.assert_close(kept_logprobs(z_gen, y, all_kept), torch.log_softmax(z_gen, -1).gather(-1, y[..., None])[..., 0])
