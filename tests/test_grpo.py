"""GRPO pieces against direct formulas; an is_correction=none step is plain PPO."""
import pytest
import torch

from bench.rl.grpo import GRPOConfig, aggregate, group_advantages, policy_loss
from bench.rl.importance import importance_weights


def test_group_advantages_normalise_within_each_group():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    a = group_advantages(r, group_size=4, std_scaling=True)
    g0 = r[:4]
    torch.testing.assert_close(a[:4], (g0 - g0.mean()) / (g0.std() + 1e-6))
    assert (a[4:] == 0).all()  # a group with one reward value carries no signal
    torch.testing.assert_close(group_advantages(r, 4, std_scaling=False)[:4], g0 - g0.mean())


def direct_ppo(lp_new, lp_old, adv, mask, eps_low, eps_high):
    """Plain PPO clipped objective, token-mean over valid tokens, no IS weights."""
    total, n = 0.0, 0
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            if mask[i, j]:
                ratio = torch.exp(lp_new[i, j] - lp_old[i, j])
                clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
                total = total - torch.minimum(ratio * adv[i], clipped * adv[i])
                n += 1
    return total / n


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    lp_old = -torch.rand(6, 5, generator=g) * 3
    lp_new = (lp_old + 0.4 * torch.randn(6, 5, generator=g)).requires_grad_()
    lp_gen = lp_old + 0.1 * torch.randn(6, 5, generator=g)
    mask = torch.arange(5)[None] < torch.tensor([5, 3, 1, 4, 2, 5])[:, None]
    adv = torch.randn(6, generator=g)
    return lp_new, lp_old, lp_gen, adv, mask


def test_step_with_is_correction_none_equals_plain_ppo_loss_and_gradient(batch):
    lp_new, lp_old, lp_gen, adv, mask = batch
    cfg = GRPOConfig(eps_low=0.2, eps_high=0.28)
    w, _ = importance_weights(lp_gen, lp_old, mask, mode="none")
    loss, _ = policy_loss(lp_new, lp_old, adv, mask, w, cfg)
    ref = direct_ppo(lp_new, lp_old, adv, mask, 0.2, 0.28)
    torch.testing.assert_close(loss, ref)
    (g1,) = torch.autograd.grad(loss, lp_new)
    (g2,) = torch.autograd.grad(ref, lp_new)
    torch.testing.assert_close(g1, g2)


def test_is_weights_multiply_the_per_token_loss(batch):
    lp_new, lp_old, lp_gen, adv, mask = batch
    cfg = GRPOConfig()
    w, _ = importance_weights(lp_gen, lp_old, mask, mode="tis", cap=2.0)
    loss, _ = policy_loss(lp_new, lp_old, adv, mask, w, cfg)
    ratio = torch.exp(lp_new - lp_old)
    surr = torch.minimum(ratio * adv[:, None], ratio.clamp(0.8, 1.28) * adv[:, None])
    torch.testing.assert_close(loss, (-surr * w * mask).sum() / mask.sum())


def test_seq_mean_token_mean_weighs_sequences_equally():
    x = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, True], [True, False, False]])
    assert float(aggregate(x, m, "token_mean")) == pytest.approx(7 / 4)
    assert float(aggregate(x, m, "seq_mean_token_mean")) == pytest.approx((1 + 4) / 2)


def test_kl_to_reference_is_k3_and_zero_for_identical_policies(batch):
    lp_new, lp_old, _, adv, mask = batch
    cfg = GRPOConfig(kl_coef=0.1)
    _, met = policy_loss(lp_new, lp_old, adv, mask, torch.ones_like(lp_old), cfg, lp_ref=lp_new.detach())
    assert met["rl/kl_ref"] == 0.0
    _, met = policy_loss(lp_new, lp_old, adv, mask, torch.ones_like(lp_old), cfg, lp_ref=lp_old)
    d = (lp_old - lp_new.detach())
    assert met["rl/kl_ref"] == pytest.approx(float(((d.exp() - d - 1) * mask).sum() / mask.sum()), rel=1e-6)
