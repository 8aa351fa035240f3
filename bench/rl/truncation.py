"""Log-probs under a truncated (top-k / top-p) sampling distribution, for importance weights.

With top-k or top-p the generator does not sample from p_g = softmax(z_g / T) but from its
truncation to a kept set K (bench/generation/generator.py `truncate_logits`, applied to z_g / T):

    q_g(y) = p_g(y) / Σ_{v∈K} p_g(v)          for y ∈ K, 0 outside.

The importance ratio that corrects a sample from q_g towards the trainer must therefore use q_g
(the behaviour policy actually sampled from: `Rollout.logprobs`), and the trainer's
probabilities renormalised over the *same* K:

    log q_t(y) = z_t(y)/T − logsumexp_{v∈K} z_t(v)/T  =  log p_t(y) − log Σ_{v∈K} p_t(v).

Using the untruncated log p_g instead overstates every ratio by 1 / Σ_{v∈K} p_g(v) (≈ 1/top_p:
1.09 at top_p = 0.9), and using the untruncated trainer log p_t while dividing by q_g understates
it by the trainer's kept mass. K is the generator's set (`Rollout.kept_mask`, [B, N, V] bool):
the trainer must not re-derive it from its own logits, which differ by exactly the precision gap
being measured. The mismatch metrics (bench/rl/mismatch.py) keep comparing the untruncated p_t
and p_g: they measure the numerics, not the sampler.
"""
from __future__ import annotations

import torch


def kept_logprobs(logits: torch.Tensor, targets: torch.Tensor, kept: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log q_t(target): fp32 log-softmax of logits / T restricted to `kept` ([B, N, V] bool).
    A target outside `kept` gets −inf (probability 0 under the truncated distribution)."""
    scaled = (logits.float() / temperature).masked_fill(~kept, float("-inf"))
    return torch.log_softmax(scaled, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
