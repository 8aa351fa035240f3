"""Scale-out under torchrun: DDP data parallelism with rank 0 as the only writer.

`torchrun --nproc_per_node=N -m recipes.pretrain ...` sets WORLD_SIZE/RANK; each rank takes its
slice of the same global batch (so N processes reproduce the 1-process run up to the order of
the gradient all-reduce), DDP averages gradients, the logged loss is the all-reduced mean, and
rank 0 alone writes the run dir, logs and checkpoints. Instability decisions (skip, halt,
fallback) are rank 0's, broadcast to every rank: ranks that disagreed about skipping a step
would silently diverge, and ranks that disagreed about halting would deadlock.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: torch.device) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size())


def shard(batch: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (batch size divisible by the world)."""
    if not info.enabled:
        return batch
    per = batch.shape[0] // info.world
    return batch[info.rank * per:(info.rank + 1) * per]


def wrap(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model)


def mean(x: float, info: DistInfo) -> float:
    if not info.enabled:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / info.world


def from_main(obj, info: DistInfo):
    """Rank 0's python object on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
