"""Where a step's time goes: `time/<phase>_s` and `time/<phase>_frac` (DESIGN.md §6).

    timer = PhaseTimer(TimingConfig(sync_interval=10), device)
    timer.begin_step(step)
    with timer.phase("refit"): ...
    with timer.phase("update"):
        ...
        with timer.phase("comm"): ...      # counted in comm, subtracted from update
    metrics = timer.end_step()              # every phase's _s and _frac, plus other

Accounting. The clock is `time.perf_counter_ns` (monotonic, integer nanoseconds), so every sum
and difference below is exact integer arithmetic; seconds and fractions are made only at the end.
A phase's time is EXCLUSIVE: its wall interval minus the wall intervals of the phases opened inside
it. Phases nest like a stack (a `with` block cannot overlap another half-way), so the intervals of
the outermost phases are disjoint sub-intervals of the step, and

    sum over phases of exclusive time  =  sum of outermost intervals  <=  step wall time.

`other` = step wall time - that sum: time between phases (loop bookkeeping, tensor gathers the
loop did not put in a phase, Python between calls). It is >= 0 by construction (disjoint
sub-intervals of a monotonic clock, integer arithmetic), never hidden, and the twelve fractions
`<phase>_s / step_s` add up to 1 (up to the last bit of the float division).
A phase opened again inside itself (update inside update) is counted once: the inner interval is
subtracted from the outer one and added back as the inner's own time.

Device synchronisation. CUDA kernels run asynchronously: the host returns from a launch at once,
and the time shows up wherever the host next waits for the device. A phase boundary is honest only
if the device is drained there, so on a SAMPLED step (step % sync_interval == 0) the timer calls
`torch.cuda.synchronize` at begin_step, at every phase entry and exit, and at end_step: each phase
then holds exactly the device work issued inside it, and `time/synced` is 1. A sync costs a wait
per boundary and stalls the launch queue the next phase could have overlapped with, so on every
other step the timer adds no synchronisation at all. Those steps report HOST time: the time the
CPU spent inside each phase, where device work still queued at a boundary is charged to the
phase that next blocks on the device (in practice `update`, whose `float(loss)` waits for the
forward and backward; the generator's EOS check `bool(done.all())` reads back every decode step,
so rollout with an EOS id is close to honest anyway). The step total of an unsampled step is the
host interval between begin_step and end_step; work queued after the last blocking call (the
optimizer's kernels) lands in the next step. `time/synced` is 0 on these steps: average phase splits over synced steps
only. `sync_interval=0` never synchronises. On CPU (and any synchronous device) host time is
device time: no sync is ever issued and every step reports `time/synced` = 1.

`weight_sync` (generator.backend=vllm, DESIGN §13): exporting the trainer's weights and loading
them into the engine in place, inside `refit`.

Code that has no handle on the timer (the generator's prefill/decode, collective helpers) uses
the module-level `phase(name)`: it times into the timer whose step is open in this process, and
costs one global read when none is (a no-op outside a step).
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from bench.core.errors import BadInput

if TYPE_CHECKING:  # torch is imported where a device is resolved: report tools read PHASES without it
    import torch

PHASES = ("refit", "rollout_prefill", "rollout_decode", "score", "update", "eval", "checkpoint",
          "monitor", "comm", "data_wait", "weight_sync", "other")
MEASURED = PHASES[:-1]  # `other` is what is left, never entered
ENERGY_SOURCES = ("auto", "nvml", "rapl", "off")


@dataclass
class TimingConfig:
    """conf/timing/default.yaml. sync_interval: device sync at phase boundaries on steps with
    step % sync_interval == 0 (0: never). energy: which counter EnergyMeter reads (bench.perf.energy)."""
    sync_interval: int = 10
    energy: str = "auto"

    def validate(self) -> str | None:
        if self.sync_interval < 0:
            return f"timing.sync_interval={self.sync_interval} must be >= 0 (0: never sync at phase boundaries)"
        if self.energy not in ENERGY_SOURCES:
            return f"timing.energy={self.energy!r}; valid: {', '.join(ENERGY_SOURCES)}"
        return None


def check_config(cfg: TimingConfig) -> None:
    """BadInput (one line naming the value and the valid choices) before any compute."""
    if (reason := cfg.validate()) is not None:
        raise BadInput(reason)


def device_sync(device: torch.device | str) -> Callable[[], None] | None:
    """The call that drains `device`'s queue, or None for a synchronous device (CPU)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return functools.partial(torch.cuda.synchronize, device)
    if device.type == "mps":
        return torch.mps.synchronize
    return None


class _Phase:
    """Reusable context manager for one phase name; all state lives on the timer's stack, so one
    instance serves nested and repeated uses (and costs no allocation per `with`)."""
    __slots__ = ("timer", "name")

    def __init__(self, timer: "PhaseTimer", name: str):
        self.timer, self.name = timer, name

    def __enter__(self):
        self.timer._enter(self.name)
        return self

    def __exit__(self, *exc):
        self.timer._exit()
        return False


_ACTIVE: "PhaseTimer | None" = None  # the timer whose step is open in this process
_NULL = contextlib.nullcontext()


def phase(name: str):
    """`with phase("rollout_decode"):` in code that has no timer handle: times into the open
    step's timer, or does nothing when no step is open."""
    t = _ACTIVE
    return _NULL if t is None or t._t0 is None else t.phase(name)


def device_honest() -> bool:
    """Whether a phase opened now measures device time: a step is open and either the device is
    synchronous (CPU) or this step is sampled (its boundaries synchronise). The DDP comm hook
    (bench/train/distributed.py) serialises its all-reduce only then, so unsampled CUDA steps keep
    DDP's overlap of gradient communication with the backward."""
    t = _ACTIVE
    return t is not None and t._t0 is not None and (t._sync is None or t.sampled)


class PhaseTimer:
    """Exclusive per-phase wall time of each step; see the module docstring for what it means.

    device: where the step's work runs (decides whether boundaries need a sync).
    sync / clock: injectable for tests (sync: a no-arg callable or None; clock: integer ns).
    energy: optional object with `begin()` and `end(tokens) -> dict` (bench.perf.energy.EnergyMeter),
      read at the same two instants as the step's clock, after the same syncs.
    """

    def __init__(self, cfg: TimingConfig, device: torch.device | str = "cpu", *, sync=..., clock=time.perf_counter_ns,
                 energy=None):
        check_config(cfg)
        self.interval = cfg.sync_interval
        self._sync = device_sync(device) if sync is ... else sync
        self._clock, self.energy = clock, energy
        self._phases = {n: _Phase(self, n) for n in MEASURED}
        self._acc = dict.fromkeys(MEASURED, 0)
        self._stack: list[list] = []  # [name, start_ns, ns of phases nested directly inside]
        self._t0: int | None = None
        self.sampled = False
        self.step_s = 0.0
        self.totals_ns = dict.fromkeys(PHASES, 0)  # over all ended steps, for summary.json
        self.steps = 0

    # -- phases -------------------------------------------------------------------------------
    def phase(self, name: str) -> _Phase:
        try:
            return self._phases[name]
        except KeyError:
            raise ValueError(f"unknown phase {name!r}; valid: {', '.join(MEASURED)}") from None

    def _enter(self, name: str) -> None:
        if self._t0 is None:
            raise RuntimeError(f"phase {name!r} entered outside a step: call begin_step() first")
        if self.sampled:
            self._sync()
        self._stack.append([name, self._clock(), 0])

    def _exit(self) -> None:
        if self.sampled:
            self._sync()
        name, start, inner = self._stack.pop()
        elapsed = self._clock() - start
        self._acc[name] += elapsed - inner  # exclusive: the nested phases keep their own time
        if self._stack:
            self._stack[-1][2] += elapsed

    # -- steps --------------------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        global _ACTIVE
        if self._t0 is not None:
            raise RuntimeError("begin_step() while a step is open: call end_step() first")
        self.sampled = self._sync is not None and self.interval > 0 and step % self.interval == 0
        if self.sampled:
            self._sync()  # the previous step's queued work is not this step's
        self._acc = dict.fromkeys(MEASURED, 0)
        if self.energy is not None:
            self.energy.begin()
        self._t0 = self._clock()
        _ACTIVE = self

    def end_step(self, tokens: int | None = None) -> dict[str, float]:
        """`time/<phase>_s`, `time/<phase>_frac` for all twelve phases and `time/synced`; with an
        energy meter also `energy/step_j` and `energy/j_per_token` (tokens: this step's count)."""
        global _ACTIVE
        if self._t0 is None:
            raise RuntimeError("end_step() without begin_step()")
        if self._stack:
            raise RuntimeError(f"end_step() inside phase {self._stack[-1][0]!r}: close it first")
        if self.sampled:
            self._sync()
        wall = self._clock() - self._t0
        self._t0 = None
        if _ACTIVE is self:
            _ACTIVE = None
        ns = dict(self._acc)
        ns["other"] = wall - sum(self._acc.values())
        self.step_s = wall / 1e9
        self.steps += 1
        out = {}
        for p in PHASES:
            self.totals_ns[p] += ns[p]
            out[f"time/{p}_s"] = ns[p] / 1e9
            out[f"time/{p}_frac"] = ns[p] / wall if wall else float(p == "other")
        out["time/synced"] = float(self._sync is None or self.sampled)
        if self.energy is not None:
            out.update(self.energy.end(tokens))
        return out

    def abort_step(self) -> None:
        """Drop an open step without metrics (an exception left it half-way); closes its phases
        and detaches the module-level `phase()`. A no-op when no step is open."""
        global _ACTIVE
        self._stack.clear()
        self._t0 = None
        if _ACTIVE is self:
            _ACTIVE = None

    def add_rows(self, rows: list[dict]) -> None:
        """Resume: add the steps already in metrics.jsonl (their `time/<phase>_s`) to the totals,
        and their energy to the meter's, so summary.json covers the whole run, not the segment."""
        for r in rows:
            if "time/other_s" not in r:
                continue
            self.steps += 1
            for p in PHASES:
                self.totals_ns[p] += round(r[f"time/{p}_s"] * 1e9)
        if self.energy is not None and hasattr(self.energy, "add_rows"):
            self.energy.add_rows(rows)

    def summary(self) -> dict:
        """summary.json's `time`: total seconds per phase over the ended steps and their fractions
        (synced and unsynced steps alike: on CUDA the totals are honest, since every unsynced
        step's queued work lands in some later phase, but the split is host time)."""
        wall = sum(self.totals_ns.values())
        return {"steps": self.steps, "step_s_total": wall / 1e9,
                "phases_s": {p: v / 1e9 for p, v in self.totals_ns.items()},
                "phases_frac": {p: (v / wall if wall else 0.0) for p, v in self.totals_ns.items()}}


# Collectives whose Python entry points `timed_collectives` wraps (the object variants and barrier
# too: bench's helpers use broadcast_object_list and barrier, and a barrier is rank-wait time).
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "reduce_scatter",
               "reduce_scatter_tensor", "broadcast", "broadcast_object_list", "all_to_all_single", "barrier")


def timed(fn: Callable, name: str = "comm") -> Callable:
    """`fn` run inside `phase(name)` of the open step (see `phase`). A call with async_op=True is
    passed through untimed: it returns at once and its transfer overlaps whatever runs next
    (FSDP2's prefetching all-gathers), so it has no interval of its own to charge."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if kwargs.get("async_op"):
            return fn(*args, **kwargs)
        with phase(name):
            return fn(*args, **kwargs)

    wrapper.__timed_phase__ = name
    return wrapper


@contextlib.contextmanager
def timed_collectives(module=None, names: tuple[str, ...] = COLLECTIVES):
    """Within the block, every blocking call of `torch.distributed.<name>` made through the module
    attribute (`dist.all_reduce(t)`, as bench.train.distributed and bench.rl.rollout_shards call them)
    is timed into the `comm` phase of the open step, and the attributes are restored on exit.

    What `comm` then holds: the time from the call to its return, which for gloo (CPU) is the
    transfer plus the wait for the slowest rank to arrive. NCCL returns once the collective is
    queued on the device, so on CUDA the interval is honest only on sampled steps, whose phase
    boundaries synchronise (see the module docstring; the sync at entry drains the compute
    queued before the collective, so it is not charged to comm). Not caught: DDP's gradient
    all-reduce (C++ buckets overlapping backward: it is part of `update`), FSDP2's async
    prefetches (async_op=True), and names bound with `from torch.distributed import all_reduce`
    before the block. Wrap the collectives' call sites, not an FSDP forward, to keep syncs off
    FSDP's overlapped traffic."""
    if module is None:
        import torch.distributed as module
    saved = {n: getattr(module, n) for n in names if hasattr(module, n)}
    try:
        for n, fn in saved.items():
            if not hasattr(fn, "__timed_phase__"):  # nested blocks: wrap once
                setattr(module, n, timed(fn))
        yield
    finally:
        for n, fn in saved.items():
            setattr(module, n, fn)


def overhead_ns(n: int = 20000, repeats: int = 5) -> dict[str, float]:
    """Micro-benchmark of the timer's own cost on CPU (no sync): ns per `with timer.phase(..)`
    block (two clock reads plus the stack bookkeeping), per nested block, per module-level
    `phase()` block, and per bare perf_counter_ns pair for scale. The minimum over `repeats`
    runs of `n` blocks each (the minimum is the cost; larger runs are other processes)."""
    timer = PhaseTimer(TimingConfig(sync_interval=0), "cpu")
    clock = time.perf_counter_ns

    def bench(body) -> float:
        best = float("inf")
        for _ in range(repeats):
            t = clock()
            body()
            best = min(best, (clock() - t) / n)
        return best

    def empty():
        for _ in range(n):
            pass

    def flat():
        ph = timer.phase("update")
        for _ in range(n):
            with ph:
                pass

    def nested():
        up, comm = timer.phase("update"), timer.phase("comm")
        with up:
            for _ in range(n):
                with comm:
                    pass

    def module_level():
        for _ in range(n):
            with phase("rollout_decode"):
                pass

    def clock_pair():
        for _ in range(n):
            clock()
            clock()

    timer.begin_step(0)
    base = bench(empty)
    out = {"phase_ns": bench(flat) - base, "nested_phase_ns": bench(nested) - base,
           "module_phase_ns": bench(module_level) - base, "perf_counter_pair_ns": bench(clock_pair) - base}
    timer.end_step()
    return out


if __name__ == "__main__":
    for k, v in overhead_ns().items():
        print(f"{k:>22}: {v:8.1f}")
