"""The PPO update of one GRPO step: `ppo_epochs` passes over `minibatches` minibatches.

pi_old stays the pre-update recompute for the whole step (the rollout's `lp_old`), so every
optimizer step of the step clips against the same policy. Minibatch i is the i-th slice of every
rollout shard (bench/rl/rollout_shards.py `minibatch_rows`): `rows` indexes this process's rows,
`grows` the global batch.

A minibatch whose groups are all tied (zero advantage everywhere) carries no policy-gradient
signal; stepping anyway would still move the weights through Adam's momentum, so it is skipped.
The step's metrics are combined over the updates that ran (`combine`): a skipped minibatch
contributes nothing, rather than overwriting the step's loss, grad norm and numerics with zeros.
A step where nothing ran logs no train/loss or train/grad_norm at all, and `train/updates` = 0.

Every event raised inside the update carries the recipe step (the rollout step: the one counter
in metrics, events and evals) and the optimizer step as `opt_step` (`tag_opt_step` hands it to
the emitter before each optimizer step).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from bench.train.distributed import DistInfo
from bench.models.decoder import token_logprobs
from bench.rl.batch import RolloutBatch, Scored
from bench.rl.grpo import GRPOConfig, policy_loss
from bench.rl.rollout_shards import local_shards, minibatch_rows, token_norm, token_weighted_mean


@dataclass
class UpdateResult:
    metrics: dict[str, float]
    halt: bool
    opt_step: int


def ppo_update(batch: RolloutBatch, glob: Scored, weights: torch.Tensor, g: GRPOConfig, forward, trainer, monitor,
               step: int, opt_step: int, shards: int, dist: DistInfo, tag_opt_step: Callable[[int | None], None],
               ) -> UpdateResult:
    """Run the step's PPO epochs; `weights` are this process's rows of the IS weights, `glob` the
    gathered global signals (identical on every rank: the skip decision must agree under DDP)."""
    P, device = batch.prompt_len, batch.tokens.device
    n_here = len(local_shards(shards, dist))
    per_shard = batch.tokens.shape[0] // n_here
    updates, halt = [], False
    for _epoch in range(g.ppo_epochs):
        for i in range(g.minibatches):
            rows = minibatch_rows(i, g.minibatches, n_here, per_shard, device)
            grows = minibatch_rows(i, g.minibatches, shards, per_shard, device)
            if not glob.adv[grows].any():
                continue
            t_up = time.perf_counter()
            tag_opt_step(opt_step)
            monitor.begin_step(step)
            with trainer.context():
                logits = forward(batch.inputs[rows])
            lp_new = token_logprobs(logits[:, P - 1:], batch.targets[rows, P - 1:], g.temperature)
            m = batch.scored.mask[rows]
            loss, rl = policy_loss(lp_new, batch.scored.lp_old[rows], batch.scored.adv[rows], m, weights[rows], g,
                                   None if batch.lp_ref is None else batch.lp_ref[rows],
                                   token_norm=token_norm(glob.mask, grows, dist))
            rl = token_weighted_mean(rl, int(m.sum()), dist, device)
            trainer.backward(loss)
            metrics, decision = trainer.step(step, float(loss.detach()), int(m.sum()), t_up)
            updates.append({**metrics, **rl})
            opt_step += 1
            if decision.halt:
                halt = True
                break
        if halt:
            break
    tag_opt_step(None)
    skipped = g.ppo_epochs * g.minibatches - len(updates)
    out = combine(updates) if updates else {"train/lr": trainer.lr(), "rl/clip_frac": 0.0}
    return UpdateResult({**out, "train/updates": len(updates), "train/minibatches_skipped": skipped}, halt, opt_step)


def combine(updates: list[dict[str, float]]) -> dict[str, float]:
    """One step's metrics from its optimizer updates: the worst case for the numerics extremes
    (`*_max`, `amax`, overflow/underflow fractions: max; `*_min`, `sqnr_db`: min), the total for
    counts, the first update's learning rate (the step's), the last loss scale, the mean otherwise
    (loss, grad norm, clip fraction, kl_ref, scales)."""
    keys = list(dict.fromkeys(k for u in updates for k in u))
    out = {}
    for k in keys:
        vals = [u[k] for u in updates if k in u]
        leaf = k.rsplit("/", 1)[-1]
        if k == "train/lr":
            out[k] = vals[0]
        elif k == "train/loss_scale":
            out[k] = vals[-1]
        elif leaf.endswith("_max") or leaf in ("amax", "overflow_frac", "underflow_frac"):
            out[k] = max(vals)
        elif leaf.endswith("_min") or leaf == "sqnr_db":
            out[k] = min(vals)
        elif leaf.endswith("_count"):
            out[k] = sum(vals)
        else:
            out[k] = sum(vals) / len(vals)
    return out
