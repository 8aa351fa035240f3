"""The masked next-token cross-entropy every language-model loss in the bench is made of.

For logits z [B, T, V], targets y [B, T] and a mask m [B, T] (True where the token counts):

    ce[b, t]  = −log softmax(z[b, t])[y[b, t]] = logsumexp(z[b, t]) − z[b, t, y[b, t]]
    sum       = Σ_{b,t} m[b, t] · ce[b, t]          count = Σ m
    mean      = sum / count

computed by torch.nn.functional.cross_entropy on fp32 logits (the logits of a bf16/fp16/FP8
forward are upcast first, as every mixed-precision training stack does before the softmax:
a bf16 logsumexp over the vocabulary loses ~3 significant digits). Masked positions multiply by
0 after the fact rather than being indexed out, so the reduction order, and therefore every bit
of the result, is the same whatever the mask holds.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_ce_sum(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ m·ce, Σ m): the masked sum of per-token cross-entropies and the number of counted tokens."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    return (ce * mask.flatten()).sum(), mask.sum()


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the masked tokens (a scalar that carries the gradient)."""
    total, count = masked_ce_sum(logits, targets, mask)
    return total / count
