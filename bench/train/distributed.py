"""Scale-out under torchrun: DDP or FSDP2 data parallelism with rank 0 as the only writer.

`torchrun --nproc_per_node=N -m recipes.pretrain ...` sets WORLD_SIZE/RANK; each rank takes its
slice of the same global batch (so N processes reproduce the 1-process run up to the order of
the gradient all-reduce), DDP averages gradients, the logged loss is the all-reduced mean, and
rank 0 alone writes the run dir, logs and checkpoints. Instability decisions (skip, halt,
fallback) are rank 0's, broadcast to every rank: ranks that disagreed about skipping a step
would silently diverge, and ranks that disagreed about halting would deadlock.

`parallel=fsdp` shards instead of replicating: FSDP2's `fully_shard` on every transformer block
and then on the root (which holds the tied embedding / lm_head). Each block's weights are
all-gathered just before its forward and backward and freed after; gradients are reduce-scattered
(averaged), so each rank's AdamW updates only its shard, in fp32. The precision recipes need no
change: inside the block's forward the FP8 linears see ordinary unsharded weights, so the
weight's amax and scale are those of the whole tensor, exactly as in one process. Checkpoints
hold the full (unsharded) state dicts, gathered onto rank 0, so a run saved under FSDP has the
same model keys as a 1-process run. Every rank must take part in every forward (the all-gathers
are collectives), so under FSDP all ranks run the eval, and rank 0 alone logs it.
"""
from __future__ import annotations

import os
import sys
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


PARALLEL_MODES = ("ddp", "fsdp")


def wrap(model: torch.nn.Module, info: DistInfo, mode: str = "ddp") -> torch.nn.Module:
    """The module to call forward on. DDP wraps (the model itself keeps plain parameters); FSDP2
    shards the model in place (its parameters become DTensors), so build the optimizer after."""
    if not info.enabled:
        return model
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.layers:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ddp = DDP(model)
    ddp.register_comm_hook(None, timed_allreduce_hook)
    return ddp


def timed_allreduce_hook(group, bucket):
    """DDP comm hook: the gradient bucket's all-reduce (mean over ranks), charged to `comm`.

    DDP all-reduces gradient buckets from inside `backward()` (C++ autograd hooks), so no Python
    wrapper of `dist.all_reduce` sees them: without this hook they are part of `update`. What the
    default hook does: divide the bucket by the world size, launch an async all-reduce, and let the
    reducer wait for it at the end of backward, so the transfer overlaps the remaining backward.
    An overlapped interval is not a phase of its own (phases are disjoint intervals of the step),
    so on steps whose phases are device-honest (bench.perf.timing.device_honest: CPU, or a sampled CUDA
    step) the all-reduce runs BLOCKING inside `phase("comm")`: comm then holds each bucket's full
    transfer plus the wait for the slowest rank, and `update` holds the compute only. The price is
    the overlap on those steps (on CPU/gloo small: one 25 MB bucket holds a small model's grads, so
    its all-reduce starts at the end of backward anyway). On unsampled CUDA steps it is DDP's
    own async path, untimed (charged to `update`), so the run keeps its overlap. The hook runs on
    the autograd thread while the main thread waits in backward(), so the timer's phase stack is
    still used by one thread at a time. Mean, not sum: as DDP's default (`allreduce_hook`)."""
    from bench.perf.timing import device_honest, phase

    group = group if group is not None else dist.group.WORLD
    buf = bucket.buffer()
    buf.div_(dist.get_world_size(group))
    if not device_honest():
        work = dist.all_reduce(buf, group=group, async_op=True)
        return work.get_future().then(lambda fut: fut.value()[0])
    with phase("comm"):
        dist.all_reduce(buf, group=group)
    fut = torch.futures.Future()
    fut.set_result(buf)
    return fut


def check_parallel(parallel: str, precision: str, policy_action: str) -> str | None:
    """Why `parallel` cannot run with this precision / policy (None: it can). Checked before compute."""
    if parallel not in PARALLEL_MODES:
        return f"parallel={parallel!r}; valid: {', '.join(PARALLEL_MODES)}"
    if parallel == "fsdp" and precision == "fp16":
        # GradScaler's per-rank inf check on sharded grads would let ranks disagree on skipping.
        return "parallel=fsdp does not support precision=fp16 (loss scaling); use bf16 or an fp8 recipe"
    if parallel == "fsdp" and policy_action == "fallback":
        return "parallel=fsdp does not support policy=fallback (it swaps modules of a sharded model)"
    return None


def is_sharded(model: torch.nn.Module) -> bool:
    """True once FSDP2 has sharded the model (its class is swapped to an FSDPModule subclass)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts, on rank 0 only (others get empty dicts).
    A collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, opt, options=opts)


def load_full_state(model: torch.nn.Module, opt: torch.optim.Optimizer, model_sd: dict, opt_sd: dict) -> None:
    """Shard full state dicts (every rank read the same checkpoint file) back onto this rank."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=opts)
    set_optimizer_state_dict(model, opt, opt_sd, options=opts)


def mean(x: float, info: DistInfo) -> float:
    if not info.enabled:
        return x
    # NCCL reduces CUDA tensors only; gloo takes CPU ones.
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([x], dtype=torch.float64, device=dev)
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


def shutdown(info: DistInfo) -> None:
    """Finish together: a rank that exits while a peer still has gloo work in flight aborts it."""
    if info.enabled and dist.is_initialized():
        dist.barrier()


def leave(info: DistInfo, code: int) -> None:
    """End a torchrun worker after `shutdown`, skipping interpreter teardown (os._exit). In that
    teardown, process-group threads still referenced by FSDP's device mesh occasionally abort the
    worker (`terminate called without an active exception`, even after destroy_process_group;
    seen twice in one CPU test run, not reproducible on demand), which turns a completed run
    into a failed job. By now the run dir is closed and flushed; only std streams need it."""
    if info.enabled:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
