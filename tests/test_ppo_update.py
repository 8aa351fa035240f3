"""The PPO update loop: a skipped (all-tied) minibatch leaves the step's metrics to the updates
that ran; every update is tagged with the rollout step and its own optimizer step."""
import contextlib

import pytest
import torch

from bench.train.distributed import DistInfo
from bench.numerics.policy import Decision
from bench.rl.batch import RolloutBatch, Scored
from bench.rl.grpo import GRPOConfig
from bench.rl.update import combine, ppo_update


class FakeTrainer:
    """Records what the update hands the optimizer step; returns the loss it saw as metrics."""

    def __init__(self, halt_at=None):
        self.calls, self.halt_at = [], halt_at

    def context(self):
        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()

    def lr(self):
        return 0.5

    def step(self, step, loss, tokens, t0):
        self.calls.append((step, loss))
        n = len(self.calls)
        return ({"train/loss": loss, "train/grad_norm": float(n), "train/lr": 0.1 * n,
                 "numerics/overflow_frac_max": 0.01 * n, "numerics/sqnr_db_min": 30.0 - n,
                 "numerics/nonfinite_count": 1}, Decision(halt=n == self.halt_at))


class Monitor:
    def begin_step(self, step):
        self.step = step


def batch(adv):
    B, P, N, V = len(adv), 2, 3, 5
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, V, (B, P + N), generator=g)
    lp = -torch.rand(B, N, generator=g)
    mask = torch.ones(B, N, dtype=torch.bool)
    sc = Scored(lp, lp, lp, lp, mask, torch.zeros(B), torch.tensor(adv), torch.zeros(B, N))
    return RolloutBatch([None] * B, tokens, sc, None, 0.0, P)


def run(adv, minibatches, epochs=1, halt_at=None):
    b = batch(adv)
    emb = torch.nn.Embedding(5, 5)
    tr, tags = FakeTrainer(halt_at), []
    g = GRPOConfig(group_size=2, prompts_per_step=len(adv) // 2, minibatches=minibatches, ppo_epochs=epochs)
    res = ppo_update(b, b.scored, torch.ones(len(adv), 3), g, emb, tr, Monitor(), step=7, opt_step=40, shards=1,
                     dist=DistInfo(), tag_opt_step=tags.append)
    return res, tr, tags


def test_a_skipped_last_minibatch_does_not_overwrite_the_steps_metrics():
    res, tr, tags = run([1.0, -1.0, 0.0, 0.0], minibatches=2)  # the second group is tied
    assert len(tr.calls) == 1
    assert res.metrics["train/loss"] == tr.calls[0][1] and res.metrics["train/grad_norm"] == 1.0
    assert res.metrics["train/updates"] == 1 and res.metrics["train/minibatches_skipped"] == 1
    assert res.opt_step == 41 and tags == [40, None]


def test_every_update_carries_the_rollout_step_and_its_optimizer_step():
    res, tr, tags = run([1.0, -1.0, 2.0, -2.0], minibatches=2, epochs=2)
    assert [c[0] for c in tr.calls] == [7, 7, 7, 7] and tags == [40, 41, 42, 43, None] and res.opt_step == 44


def test_a_step_without_any_update_logs_no_loss_or_grad_norm():
    res, tr, _ = run([0.0, 0.0, 0.0, 0.0], minibatches=1)
    assert tr.calls == [] and "train/loss" not in res.metrics and "train/grad_norm" not in res.metrics
    assert res.metrics["train/updates"] == 0 and res.metrics["train/lr"] == 0.5


def test_halt_stops_the_remaining_updates():
    res, tr, _ = run([1.0, -1.0, 2.0, -2.0], minibatches=2, epochs=2, halt_at=2)
    assert res.halt and len(tr.calls) == 2


def test_combine_takes_worst_numerics_total_counts_first_lr_and_mean_otherwise():
    ups = [{"train/loss": 1.0, "train/lr": 0.3, "numerics/overflow_frac_max": 0.1, "numerics/sqnr_db_min": 20.0,
            "numerics/nonfinite_count": 2, "numerics/l0/input/amax": 5.0, "train/loss_scale": 8.0},
           {"train/loss": 3.0, "train/lr": 0.2, "numerics/overflow_frac_max": 0.0, "numerics/sqnr_db_min": 25.0,
            "numerics/nonfinite_count": 1, "numerics/l0/input/amax": 7.0, "train/loss_scale": 4.0}]
    assert combine(ups) == {"train/loss": 2.0, "train/lr": 0.3, "numerics/overflow_frac_max": 0.1,
                            "numerics/sqnr_db_min": 20.0, "numerics/nonfinite_count": 3,
                            "numerics/l0/input/amax": 7.0, "train/loss_scale": 4.0}
