"""GRPO across rollout shards: torchrun ranks (or, in one process, a loop) that each sample a
contiguous slice of the step's prompts, and the collectives that keep the run equal to one process.

Shards. A step's `prompts_per_step` prompts are split into S contiguous slices of whole groups
(the G samples of a prompt stay together), so group advantages are computed locally and exactly.
Under torchrun S is the world size and rank r samples shard r; in one process
`grpo.rollout_shards=S` loops over the S shards itself, one `generate` call per shard with the
same batch composition as a rank's. Shard s samples with a torch.Generator seeded by
`shard_seed(seed, step, s)`, a pure function, so:
  * a 1-process run with rollout_shards=S draws exactly the tokens of an S-process run
    (same weights, same batch per generate call, same RNG stream), and
  * resume needs no sampler state: step k's streams are recomputed from (seed, k).

Why collectives beyond DDP's gradient all-reduce:
  * IS weights and mismatch metrics are batch statistics. `batch_normalize` divides by the mean
    weight over the valid tokens of the *whole* batch, and every `mismatch/*`, `is/*`,
    `rollout/*` number is a mean over the whole batch. So every rank all-gathers the per-row
    tensors (`gather_rows`), computes them on the global batch (identically on every rank), and
    keeps its own rows of the weights.
  * The loss. DDP averages the ranks' gradients. For loss_agg=token_mean the 1-process loss is
    Σ_all(l·m) / Σ_all(m); a rank's local token mean Σ_r(l·m) / Σ_r(m) averaged over ranks is
    not that unless every rank holds the same number of valid tokens. Dividing each rank's sum
    by Σ_all(m) / world (`token_norm`) makes DDP's mean exactly the global token mean (up to
    the all-reduce's fp32 summation order). seq_mean_token_mean needs nothing: every rank holds
    the same number of sequences, each with at least one valid token.
  * Decisions that gate a DDP forward/backward (skip a minibatch whose groups are all tied) must
    be the same on every rank or the gradient all-reduce deadlocks; they are taken from the
    gathered global tensors, which are bitwise identical on every rank.

Minibatches: each shard's rows are cut into `minibatches` equal slices and minibatch i is the
union of every shard's i-th slice (`minibatch_rows`), so a rank updates on its own rows only and
the 1-process S-shard run updates on the same rows in the same minibatches.
"""
from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist

from bench.train.distributed import DistInfo


def resolve_shards(requested: int, world: int, prompts_per_step: int, group_size: int, minibatches: int) -> int:
    """The number of rollout shards S (= world under torchrun). ValueError on impossible values."""
    if requested < 1:
        raise ValueError(f"grpo.rollout_shards={requested} must be a positive integer")
    if world > 1 and requested not in (1, world):
        raise ValueError(f"grpo.rollout_shards={requested} under torchrun with {world} ranks: each rank samples "
                         f"one shard; valid: 1 or {world} (both mean {world})")
    shards = world if world > 1 else requested
    if prompts_per_step % shards:
        raise ValueError(f"grpo.prompts_per_step={prompts_per_step} is not divisible into {shards} rollout shards "
                         f"({'ranks' if world > 1 else 'grpo.rollout_shards'})")
    rows = prompts_per_step // shards * group_size
    if rows % minibatches:
        raise ValueError(f"grpo.minibatches={minibatches} must divide each rollout shard's {rows} samples "
                         f"(prompts_per_step/{shards} x group_size)")
    return shards


def local_shards(shards: int, info: DistInfo) -> range:
    """The shard indices this process samples: its rank's one, or all of them in one process."""
    return range(info.rank, info.rank + 1) if info.enabled else range(shards)


def shard_seed(seed: int, step: int, shard: int) -> int:
    """The sampling seed of one shard at one step: a pure function (no RNG state to checkpoint),
    hashed so that distinct (seed, step, shard) never share a stream."""
    digest = hashlib.sha256(f"grpo-rollout/{seed}/{step}/{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def gather_rows(tensors: list[torch.Tensor], info: DistInfo) -> list[torch.Tensor]:
    """All-gather per-row tensors ([B_local, ...], equal shapes on every rank) into the global
    batch [B_local * world, ...], rank-major (rank r's rows at r*B_local). One collective for all
    of them: packed into a float64 [B_local, K] (exact for fp32/bf16/fp16, bool and integers up
    to 2^53), gathered with `all_gather` (gloo and nccl both have it), unpacked, original dtypes.
    One process: the tensors as they are."""
    if not info.enabled:
        return list(tensors)
    B = tensors[0].shape[0]
    flat = [t.reshape(B, -1) for t in tensors]
    packed = torch.cat([f.to(torch.float64) for f in flat], 1).contiguous()
    parts = [torch.empty_like(packed) for _ in range(info.world)]
    dist.all_gather(parts, packed)
    full = torch.cat(parts, 0)
    out, col = [], 0
    for t, f in zip(tensors, flat):
        k = f.shape[1]
        out.append(full[:, col:col + k].to(t.dtype).reshape(B * info.world, *t.shape[1:]))
        col += k
    return out


def minibatch_rows(i: int, minibatches: int, shards: int, rows_per_shard: int, device=None) -> torch.Tensor:
    """Row indices of minibatch i in a batch of `shards` consecutive shards of `rows_per_shard`
    rows: the i-th of `minibatches` equal slices of every shard. shards=1: one contiguous slice."""
    mb = rows_per_shard // minibatches
    return torch.cat([torch.arange(s * rows_per_shard + i * mb, s * rows_per_shard + (i + 1) * mb, device=device)
                      for s in range(shards)])


def token_norm(global_mask: torch.Tensor, global_rows: torch.Tensor, info: DistInfo) -> float:
    """policy_loss's token_mean denominator for one minibatch: (its valid tokens on all ranks) /
    world, so that DDP's mean of the ranks' Σ_local(l·m) / token_norm is Σ_all(l·m) / Σ_all(m).
    One process: the minibatch's own token count, i.e. policy_loss's default."""
    return max(float(global_mask[global_rows].sum()), 1.0) / info.world


def token_weighted_mean(metrics: dict[str, float], n_tokens: int, info: DistInfo, device=None) -> dict[str, float]:
    """Per-rank token means (rl/clip_frac, rl/kl_ref) -> the global token mean, weighting each rank
    by its valid tokens (a plain mean over ranks would weigh a rank's token by 1/its count).
    device: where the collective's tensor lives (nccl needs the rank's GPU)."""
    if not info.enabled:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([metrics[k] * n_tokens for k in keys] + [float(n_tokens)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    n = float(t[-1])
    return {k: float(v) / n if n > 0 else 0.0 for k, v in zip(keys, t[:-1])}
