"""The rollout of one GRPO step as typed batches instead of string-keyed dicts.

`Scored` holds the per-row signals every rank needs for the *global* batch (mismatch, IS and
rollout statistics are batch statistics: bench/rl/rollout_shards.py); `RolloutBatch` holds a
process's own rows: what the update reads. Shapes: B rows (prompt-major groups), P prompt tokens,
N response tokens, V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from bench.train.distributed import DistInfo
from bench.rl.rollout_shards import gather_rows


@dataclass
class Scored:
    lp_gen: torch.Tensor       # [B, N] generator log-probs, untruncated softmax(z_g / T): for mismatch metrics
    lp_behav: torch.Tensor     # [B, N] log-probs of the distribution actually sampled (truncated): for IS
    lp_old: torch.Tensor       # [B, N] trainer recompute before the update, untruncated: PPO's pi_old, mismatch
    lp_old_kept: torch.Tensor  # [B, N] the same renormalised over the generator's kept set: for IS
    mask: torch.Tensor         # [B, N] bool valid response tokens
    rewards: torch.Tensor      # [B]
    adv: torch.Tensor          # [B] group advantages
    entropy: torch.Tensor      # [B, N] trainer token entropy at temperature T

    def gathered(self, info: DistInfo) -> "Scored":
        """Every rank's rows (rank-major), identical on every rank; one process: itself."""
        return Scored(*gather_rows([getattr(self, f.name) for f in fields(self)], info))


@dataclass
class RolloutBatch:
    problems: list               # B task problems (prompt, answer)
    tokens: torch.Tensor         # [B, P+N] prompt + response
    scored: Scored
    lp_ref: torch.Tensor | None  # [B, N] reference policy (kl_coef > 0 only), in the trainer's precision
    kv_saturation_frac: float    # FP8 KV cache: fraction of K/V elements clipped on write
    prompt_len: int

    @property
    def inputs(self) -> torch.Tensor:
        return self.tokens[:, :-1]

    @property
    def targets(self) -> torch.Tensor:
        return self.tokens[:, 1:]

    @staticmethod
    def cat(parts: list["RolloutBatch"]) -> "RolloutBatch":
        """This process's shards, in shard order."""
        sc = Scored(*[torch.cat([getattr(p.scored, f.name) for p in parts]) for f in fields(Scored)])
        ref = None if parts[0].lp_ref is None else torch.cat([p.lp_ref for p in parts])
        return RolloutBatch([q for p in parts for q in p.problems], torch.cat([p.tokens for p in parts]), sc, ref,
                            sum(p.kv_saturation_frac for p in parts) / len(parts), parts[0].prompt_len)
