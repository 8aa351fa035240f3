"""The one masked cross-entropy against its definition in float64."""
import math

import torch

from bench.models.lm_loss import masked_ce_sum, masked_cross_entropy


def direct(logits, targets, mask):
    """Σ over masked (b, t) of logsumexp(z) − z_y, and the count, in float64."""
    total, n = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if mask[b, t]:
                z = [float(v) for v in logits[b, t].double()]
                m = max(z)
                total += m + math.log(sum(math.exp(v - m) for v in z)) - z[int(targets[b, t])]
                n += 1
    return total, n


def test_masked_mean_and_sum_match_the_float64_definition():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(3, 5, 7, generator=g)
    targets = torch.randint(0, 7, (3, 5), generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.4
    total, n = direct(logits, targets, mask)
    s, c = masked_ce_sum(logits, targets, mask)
    assert int(c) == n and abs(float(s) - total) < 1e-4
    assert abs(float(masked_cross_entropy(logits, targets, mask)) - total / n) < 1e-5


def test_bf16_logits_are_upcast_before_the_softmax():
    g = torch.Generator().manual_seed(1)
    logits = (4 * torch.randn(2, 3, 50, generator=g)).bfloat16()
    targets = torch.randint(0, 50, (2, 3), generator=g)
    mask = torch.ones(2, 3, dtype=torch.bool)
    total, n = direct(logits.float(), targets, mask)
    loss = masked_cross_entropy(logits, targets, mask)
    assert loss.dtype == torch.float32 and abs(float(loss) - total / n) < 1e-5


def test_masked_positions_do_not_contribute():
    logits = torch.zeros(1, 2, 3)
    logits[0, 1] = torch.tensor([1e4, -1e4, 0.0])  # a huge loss at the masked position
    targets = torch.tensor([[0, 1]])
    mask = torch.tensor([[True, False]])
    assert abs(float(masked_cross_entropy(logits, targets, mask)) - math.log(3)) < 1e-6
