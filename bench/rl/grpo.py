"""GRPO's pieces: group-normalised advantages and the clipped policy loss with IS weights.

Three policies meet in one update:
  pi_gen   the generator that sampled the tokens (its own engine and precision)
  pi_old   the trainer's recompute of the same tokens before this batch's updates
  pi_new   the trainer while it is being updated (several optimizer steps per batch)
PPO clips pi_new / pi_old. The trainer/generator mismatch pi_old / pi_gen is a separate factor:
the rollout was not sampled from pi_old, so the policy-gradient estimate is biased unless that
ratio is corrected for (bench/rl/importance.py). Its weights are detached and multiply the
per-token loss; with `is_correction=none` they are 1 and this is plain GRPO/PPO.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GRPOConfig:
    group_size: int = 8             # G samples per prompt
    prompts_per_step: int = 8
    std_scaling: bool = True        # divide advantages by the group's reward std (Dr.GRPO: false)
    eps_low: float = 0.2
    eps_high: float = 0.28          # clip-higher (DAPO): more room for low-probability tokens to grow
    kl_coef: float = 0.0            # k3 KL to the frozen reference policy
    loss_agg: str = "token_mean"    # token_mean | seq_mean_token_mean
    ppo_epochs: int = 1
    minibatches: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 0         # 0: the task's answer length + EOS
    rollout_shards: int = 1         # sampling RNG streams per step (bench/rl/rollout_shards.py); = world under torchrun

    def validate(self) -> str | None:
        if self.loss_agg not in ("token_mean", "seq_mean_token_mean"):
            return f"grpo.loss_agg={self.loss_agg!r}; valid: token_mean, seq_mean_token_mean"
        for k in ("group_size", "prompts_per_step", "ppo_epochs", "minibatches", "rollout_shards"):
            if getattr(self, k) <= 0:
                return f"grpo.{k}={getattr(self, k)} must be positive"
        if self.group_size * self.prompts_per_step % self.minibatches:
            return f"grpo.minibatches={self.minibatches} must divide group_size*prompts_per_step"
        if self.temperature <= 0:
            return f"grpo.temperature={self.temperature} must be > 0 for sampling"
        return None


def group_advantages(rewards: torch.Tensor, group_size: int, std_scaling: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """rewards [G*P] laid out prompt-major (the G samples of a prompt are contiguous).
    A = r − mean_group(r), divided by std_group(r) + eps when std_scaling. A group whose samples
    all got the same reward has zero advantage: it carries no learning signal."""
    r = rewards.float().view(-1, group_size)
    adv = r - r.mean(1, keepdim=True)
    if std_scaling:
        adv = adv / (r.std(1, keepdim=True, unbiased=True) + eps) if group_size > 1 else adv
    return adv.reshape(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str, token_norm: float | None = None) -> torch.Tensor:
    """token_mean: every valid token weighs the same (long answers weigh more);
    seq_mean_token_mean: mean over each sequence's tokens, then over sequences.
    token_norm (token_mean only): divide the masked sum by this instead of this batch's token count."""
    m = mask.float()
    if how == "token_mean":
        return masked_mean(per_token, m) if token_norm is None else (per_token * m).sum() / token_norm
    per_seq = (per_token * m).sum(1) / m.sum(1).clamp(min=1)
    has = m.sum(1) > 0
    return per_seq[has].mean() if has.any() else per_seq.sum() * 0


def policy_loss(lp_new: torch.Tensor, lp_old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                is_weights: torch.Tensor, cfg: GRPOConfig, lp_ref: torch.Tensor | None = None,
                token_norm: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate: −min(ρ·A, clip(ρ, 1−eps_low, 1+eps_high)·A) · w, ρ = pi_new/pi_old,
    w the detached IS weight; plus kl_coef · k3(pi_ref ‖ pi_new) per token when enabled.
    rl/kl_ref is reported only when lp_ref is given (the recipe builds a reference only for
    kl_coef > 0): a logged 0 would read as "the policy has not moved", not "not measured".

    token_norm: for loss_agg=token_mean, the denominator replacing this batch's valid-token count.
    Under DDP each rank holds a shard of the minibatch and DDP averages the ranks' gradients;
    passing (valid tokens of the whole minibatch, all ranks) / world makes that average exactly
    the 1-process token mean (bench/rl/rollout_shards.py: token_norm). None: the local count."""
    m = mask.float()
    ratio = torch.exp((lp_new - lp_old).clamp(-20, 20))
    a = adv[:, None]
    surr = torch.minimum(ratio * a, ratio.clamp(1 - cfg.eps_low, 1 + cfg.eps_high) * a)
    per_token = -surr * is_weights.detach()
    # clip_frac: tokens where the clipped branch is the active one (its gradient is zero).
    clipped = ((a > 0) & (ratio > 1 + cfg.eps_high)) | ((a < 0) & (ratio < 1 - cfg.eps_low))
    metrics = {"rl/clip_frac": float(masked_mean(clipped.float().detach(), m))}
    if lp_ref is not None:
        d = (lp_ref - lp_new).clamp(-20, 20)
        k3 = torch.exp(d) - d - 1  # unbiased, non-negative estimator of KL(pi_new ‖ pi_ref)
        metrics["rl/kl_ref"] = float(masked_mean(k3.detach(), m))
        if cfg.kl_coef:
            per_token = per_token + cfg.kl_coef * k3
    return aggregate(per_token, mask, cfg.loss_agg, token_norm), metrics


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[B, T] entropy of softmax(logits / T) per position (fp32)."""
    logp = torch.log_softmax(logits.float() / temperature, -1)
    return -(logp.exp() * logp).sum(-1)
