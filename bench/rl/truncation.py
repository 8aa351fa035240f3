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

from bench.generation.generator import truncate_logits


def truncated(top_k: int, top_p: float, vocab: int) -> bool:
    """Whether the sampler truncates at all (the generator's own test, engine.sample_step)."""
    return bool(top_k and top_k < vocab) or top_p < 1.0


def kept_logprobs(logits: torch.Tensor, targets: torch.Tensor, kept: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log q_t(target): fp32 log-softmax of logits / T restricted to `kept` ([B, N, V] bool).
    A target outside `kept` gets −inf (probability 0 under the truncated distribution)."""
    scaled = (logits.float() / temperature).masked_fill(~kept, float("-inf"))
    return torch.log_softmax(scaled, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def kept_mask_from_logits(logits: torch.Tensor, targets: torch.Tensor, top_k: int, top_p: float,
                          temperature: float = 1.0) -> torch.Tensor:
    """The kept set rebuilt from *these* logits with the generator's rule, plus the sampled token
    (it was in the generator's set by construction). Only for a generator that does not report
    `kept_mask`: it approximates K by the trainer's K, which differs near the top-p boundary."""
    kept = torch.isfinite(truncate_logits(logits.float() / temperature, top_k, top_p))
    return kept.scatter(-1, targets.unsqueeze(-1), True)
