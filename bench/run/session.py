"""What every recipe does around its loop: validate, open the run dir, log, checkpoint, summarise.

A recipe calls `Session.start(cfg)` first: every check of user input happens there, before any
compute, and raises BadInput (one line, exit 2). Then the session owns the run directory
(DESIGN.md §4) and its lock, the logger fan-out, the one emit path for events, checkpoints and
summary.json (status running -> completed | diverged | failed | preempted), and the loop's
bookkeeping, so a recipe's loop is only its step:

    with s.running(monitor.close):
        for step in range(start, cfg.steps):
            s.begin_step(step)
            with s.phase("update"): ...one step...
            if not s.end_step(step, metrics, decision.halt, evaluate, state, tokens=n):
                break
    return s.finish()

Where the time goes (bench/perf/timing.py, docs/timing.md): the session owns the step's PhaseTimer and
EnergyMeter. `end_step` times the policy's watch (`monitor`), the eval and the checkpoint of the
step inside it, then closes the step and logs its row LAST, so `train/step_time_s` and the
`time/*` split include them. Collectives called through `torch.distributed.<name>` anywhere in
the loop are charged to `comm` (`running` opens `timed_collectives`).
"""
from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from omegaconf import OmegaConf

from bench.train import checkpoint as ckpt
from bench.train import distributed
from bench.run import repair, rundir
from bench.core import lock as runlock
from bench.config import pick_device, validate  # noqa: F401  (pick_device: re-exported)
from bench.perf.energy import EnergyMeter
from bench.core.errors import BadInput
from bench.core.events import Event
from bench.run.logger import NullLogger, RunLogger
from bench.models.decoder import ModelConfig
from bench.numerics.policy import InstabilityPolicy
from bench.perf.timing import PhaseTimer, TimingConfig, check_config, timed_collectives
from bench.precision.cpu_gemm import half_gemm_mode, resolve as resolve_half_gemm


def typed(schema, node, what: str):
    """Merge a config node into its dataclass schema: unknown keys and wrong types are bad input."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except Exception as e:
        msg = str(e).splitlines()[0]
        raise BadInput(f"bad {what} config: {msg}") from None


class Session:
    def __init__(self, cfg, recipe: str):
        # The one validation pass (bench/config/validate.py): every check of user input, before
        # the process group, the run dir, the model or the GRPO warm-up exist. A bad value is
        # one BadInput line, exit 2, and nothing on disk.
        checked = validate(cfg, recipe)
        self.cfg, self.recipe = cfg, recipe
        self.model_cfg: ModelConfig = checked.model
        self.task, self.device, self.resume_state = checked.task, checked.device, checked.resume_state
        # Timing and energy: a bad value or a named counter this machine cannot read is bad input
        # here, before the process group and the run dir (the RAPL counter starts reading now).
        timing = typed(TimingConfig, cfg.timing, "timing")
        check_config(timing)
        self.energy = EnergyMeter.create(self.device, timing.energy)
        self.timer = PhaseTimer(timing, self.device, energy=self.energy)
        self.resume = cfg.resume
        self.dist = distributed.init(self.device)
        if self.dist.is_main:  # rank 0 alone creates and owns the run dir
            self.run_dir = rundir.prepare(cfg.run_dir, self.resume)
        distributed.barrier(self.dist)
        self.run_dir = Path(cfg.run_dir)
        self.resolved = OmegaConf.to_container(cfg, resolve=True)
        self.stop_requested = None
        self.wall_before = 0.0  # wall time of earlier segments of a resumed run

    # --- start/finish -----------------------------------------------------------------------
    def open(self, total_steps: int, start_step: int, model=None) -> None:
        """Start (or continue) the run's record: cut the JSONL files back to the resumed
        checkpoint, open the logger, write config.yaml and a `running` summary, install the
        preemption handlers. `model`: the trainer's model, to record whether FSDP sharded it."""
        if self.cfg.threads > 0:
            torch.set_num_threads(int(self.cfg.threads))
        self.t0 = time.time()
        self.status, self.steps_done, self.opt_step = "completed", start_step, None
        self.sharded = model is not None and distributed.is_sharded(model)
        # FSDP: every rank runs the eval (its forwards all-gather weights); rank 0 alone logs it.
        self.evals_here = self.dist.is_main or self.sharded
        self.policy = getattr(self, "policy", None)
        if not self.dist.is_main:
            self.log, self.summary = NullLogger(), {"final": {}, "best": {}}
            return
        notes, lost = [], []
        # The files must read as one run: move aside what followed the checkpoint, and any row
        # that can no longer be read, naming the steps (bench/run/repair.py).
        if self.resume_state is not None:
            notes, lost = repair.resume_cut(self.run_dir, self.resume_state, time.strftime("%Y%m%dT%H%M%S"))
        if self.resume_state is not None:  # summary.json's time/energy totals cover the kept rows too
            rows = _rows(self.run_dir / "metrics.jsonl")
            self.timer.add_rows(rows)
            # The pending row kept above was logged after its checkpoint saved wall_s: continue the
            # clock from the later of the two, so wall_s never goes backwards across a resume.
            self.wall_before = max([self.wall_before] + [float(r.get("wall_s", 0.0)) for r in rows])
        rundir.atomic_write_text(self.run_dir / "config.yaml", OmegaConf.to_yaml(self.cfg, resolve=True))
        self.log = RunLogger(self.run_dir, self.cfg.logger, self.resolved, total_steps, start_step,
                             resume=self.resume, wall_offset=self.wall_before)
        self.summary = rundir.read_summary(self.run_dir) if self.resume else {}
        self.summary.pop("halted_by", None)  # a resumed segment has not halted (yet)
        self.summary.update({"status": "running", "recipe": self.recipe, "run_name": self.cfg.run_name,
                             "world_size": self.dist.world,
                             "parallel": ("fsdp" if self.sharded else "ddp") if self.dist.enabled else "none",
                             "versions": rundir.versions(), "device": rundir.device_string(self.device),
                             "half_gemm": resolve_half_gemm(self.cfg.cpu_half_gemm, self.device)})
        self.summary.setdefault("final", {})
        self.summary.setdefault("best", {})
        self.write_summary()
        lock = runlock.held(self.run_dir)
        if lock is not None and lock.stale:  # value: the dead holder's pid
            pid = lock.stale.split()[0]
            self.emit(Event(start_step, "lock_takeover", lock.stale, float(pid) if pid.isdigit() else -1, 0,
                            "take_over", stat="pid"))
        if self.resume_state is not None:
            self.emit(Event(start_step, "resume", "checkpoint", start_step, 0, "resume", stat="step"))
            for line in notes:
                print(line, flush=True)
            for step in lost:
                self.emit(Event(max(step, 0), "metrics_row_lost", "metrics.jsonl", step, 0, "log", stat="step"))
        # Slurm preemption and Ctrl-C: finish the step in flight, checkpoint, exit cleanly.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._request_stop)

    def instability_policy(self, signals: tuple[str, ...], spikes: tuple[str, ...]) -> InstabilityPolicy:
        """The run's detectors and policy (bench/numerics/policy.py), emitting through this session;
        `signals`: the per-step metrics whose trends mean something for this recipe, `spikes`:
        those whose one-step z-scores do."""
        self.policy = InstabilityPolicy(self.cfg.policy, self.emit, signals, self.cfg.eval_regression_margin, spikes)
        return self.policy

    @contextmanager
    def running(self, *closers):
        """The training loop's frame: an exception marks the run failed (and propagates); the
        closers (monitor hooks, ...) run however the loop ends. Then `return s.finish()`.
        Inside it every `torch.distributed.<collective>` call is charged to the `comm` phase."""
        try:
            with timed_collectives():
                yield self
        except Exception:
            self.timer.abort_step()  # the half-done step has no row; detach module-level phase()
            self.finish("failed", self.steps_done)
            raise
        finally:
            for close in closers:
                close()

    # --- steps ------------------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        """Open step `step`'s timer (and energy reading); `end_step` closes it."""
        self.timer.begin_step(step)

    def phase(self, name: str):
        """`with s.phase("update"):` times the block into the open step (bench/perf/timing.py)."""
        return self.timer.phase(name)

    def end_step(self, step: int, metrics: dict, halt: bool, evaluate: Callable[[int], dict],
                 state: Callable[[], dict], tokens: int | None = None, counted_tokens: int | None = None) -> bool:
        """Everything after step `step`'s update: feed the trend detectors, evaluate every
        eval_every steps, checkpoint every checkpoint_every steps (and at the end, and on a stop
        request), then close the step's timer and log its row (with its `time/*`, `energy/*`,
        `train/step_time_s` and `train/tokens_per_s`). Returns False when the loop must end
        (diverged or preempted; `self.status` says which). `evaluate(steps_done)` returns the eval
        values (called only where this rank evaluates); `state()` the recipe's checkpoint state
        (called on every rank: under FSDP gathering it is a collective). tokens: this rank's
        tokens of the step (its device's joules per token); counted_tokens: the numerator of
        tokens/s (default: tokens)."""
        go = self._after_update(step, metrics, halt, evaluate, state)
        self.log_step(step, metrics, tokens, counted_tokens)
        return go

    def _after_update(self, step, metrics, halt, evaluate, state) -> bool:
        cfg, done = self.cfg, step + 1
        with self.timer.phase("monitor"):
            if self.policy is not None:
                halt = self.policy.watch(step, metrics).halt or halt
        if distributed.from_main(halt, self.dist):
            self.status, self.steps_done = "diverged", step  # the step that diverged is not done
            return False
        self.steps_done = done
        if done % cfg.eval_every == 0 or done == cfg.steps:
            with self.timer.phase("eval"):
                halted = self.run_eval(done, evaluate)
            if halted:
                self.status = "diverged"
                return False
        stop = self.should_stop(done)
        if stop:  # before the checkpoint, so its recorded JSONL sizes include the event
            self.emit(Event(done, "preempt", self.stop_requested, done, 0, "checkpoint_and_exit", stat="step"))
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or stop:
            with self.timer.phase("checkpoint"):
                self.save(done, state(), row_pending=step)
        if stop:
            self.status = "preempted"
        return not stop

    def log_step(self, step: int, metrics: dict, tokens: int | None = None, counted_tokens: int | None = None):
        """Close the open step and log its row. Written after the step's checkpoint (whose JSONL
        sizes therefore end before this row: `row_pending` lets resume keep it)."""
        # RAPL reads the whole node's packages: under torchrun (one node) its joules are every
        # rank's, so they are divided by every rank's tokens (equal shards).
        node = self.energy.node_wide and tokens is not None and self.dist.enabled
        metrics.update(self.timer.end_step(tokens * self.dist.world if node else tokens))
        dt = self.timer.step_s
        n = tokens if counted_tokens is None else counted_tokens
        metrics["train/step_time_s"] = dt  # the step's wall time: the sum of its phases and `other`
        if n is not None:
            metrics["train/tokens_per_s"] = n / dt if dt > 0 else 0.0
        self.log_metrics(step, metrics)

    def run_eval(self, steps_done: int, evaluate: Callable[[int], dict]) -> bool:
        """Evaluate where this rank evaluates, log it (rank 0), and return whether the policy halts."""
        halt = False
        if self.evals_here:
            values = evaluate(steps_done)
            if self.dist.is_main:
                halt = self.log_eval(steps_done, values)
        return distributed.from_main(halt, self.dist)

    def should_stop(self, step_done: int) -> bool:
        """SIGTERM/SIGINT arrived, or the configured stop_after step is done (rank 0 decides for
        every rank, so all of them checkpoint and stop at the same step)."""
        after = self.cfg.stop_after
        if after is not None and step_done >= int(after) and not self.stop_requested:
            self.stop_requested = f"stop_after={after}"
        self.stop_requested = distributed.from_main(self.stop_requested, self.dist)
        return self.stop_requested is not None

    def _request_stop(self, signum, frame):
        self.stop_requested = signal.Signals(signum).name

    def emit(self, ev: Event | dict) -> None:
        """Write one events.jsonl line. Dicts (from code not yet on Event) are checked by building
        the Event. Inside a GRPO update the optimizer step is attached as `opt_step`."""
        if isinstance(ev, dict):
            ev = Event(**ev)
        if ev.opt_step is None and getattr(self, "opt_step", None) is not None:
            ev = replace(ev, opt_step=self.opt_step)
        self.log.log_event(ev.to_dict())
        if ev.action == "halt" and ev.kind != "halt":
            self.summary.setdefault("halted_by", ev.to_dict())  # the first detection that stopped the run

    def write_summary(self):
        if not self.dist.is_main:
            return
        self.summary["wall_s"] = round(time.time() - self.t0 + self.wall_before, 3)
        self.summary["time"] = self.timer.summary()
        self.summary["energy"] = getattr(self, "energy_final", None) or self.energy.summary()
        # The plans change mid-run (fallback): each summary says which modules ran FP8, from when.
        if getattr(self, "plans", None):
            self.summary["precision"] = {side: plan.summary() for side, plan in self.plans.items()}
        rundir.write_summary(self.run_dir, self.summary)

    def finish(self, status: str | None = None, step: int | None = None) -> int:
        """Write the final summary, close sinks, release the run dir; returns the process exit code.
        Defaults: the status and step count the loop (end_step) arrived at."""
        status = self.status if status is None else status
        step = self.steps_done if step is None else step
        regressions = self.policy.eval_regressions if self.policy is not None else []
        self.summary.update({"status": status, "steps_completed": step, "eval_regressions": regressions})
        # A failed rank may be alone here: no collective, this rank's energy only.
        self.energy_final = self.energy.run_summary(self.dist if status != "failed" else None, distributed.mean)
        self.write_summary()
        code = {"completed": 0, "preempted": 0, "diverged": 1}.get(status, 1)
        self.log.close(code)
        if self.dist.is_main:
            runlock.release(self.run_dir)
        if status != "failed":  # a failed rank leaves at once; torchrun tears the others down
            distributed.shutdown(self.dist)
        if not self.dist.is_main:
            return code
        print(f"{status}: {self.run_dir}  (summary.json, metrics.jsonl, events.jsonl, evals.jsonl)", flush=True)
        return code

    # --- metrics ----------------------------------------------------------------------------
    def log_metrics(self, step: int, metrics: dict):
        self.log.log_metrics(step, metrics)
        for k in ("train/loss", "rollout/reward_mean", "mismatch/token_mult_prob_error"):
            if k in metrics:
                self.summary["final"][k] = metrics[k]

    def log_eval(self, step: int, values: dict) -> bool:
        """Log an eval, hand it to the detectors (regression, collapse); True when the policy halts."""
        self.log.log_eval(step, values)
        halt = self.policy.watch_eval(step, values).halt if self.policy is not None else False
        best = self.policy.eval_best if self.policy is not None else {}
        for k, v in values.items():
            self.summary["final"][k] = v
            self.summary["best"][k] = best.get(k, v)
        self.write_summary()
        return halt

    # --- checkpoints ------------------------------------------------------------------------
    def save(self, step: int, state: dict, row_pending: int | None = None):
        """Checkpoint `state` plus what every recipe needs to continue as one run: RNG, wall
        time, and the size of each JSONL file (resume cuts the files back to it). row_pending:
        the step whose metrics row is written right after this checkpoint (its time includes the
        checkpoint), which resume keeps when it directly follows the recorded size."""
        if not self.dist.is_main:
            return
        state = {**state, "step": step, "rng": ckpt.rng_state(), "wall_s": time.time() - self.t0 + self.wall_before,
                 "jsonl_sizes": rundir.jsonl_sizes(self.run_dir), "row_pending": row_pending}
        ckpt.save(self.run_dir / "checkpoints", step, state, keep=int(self.cfg.keep_checkpoints))

    def restore_common(self, state: dict) -> int:
        ckpt.set_rng_state(state["rng"])
        self.wall_before = float(state.get("wall_s", 0.0))
        return int(state["step"])


_with_row = repair.with_row  # the name tests/test_timing_wire.py imports


def _rows(path: Path) -> list[dict]:
    """The metrics rows of a (cut back) metrics.jsonl; none when it does not exist."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_recipe(cfg, recipe: str, body) -> None:
    """Run `body(session)` with the exit-code contract: 2 bad input, 1 diverged/failed, 0 ok."""
    try:
        session = Session(cfg, recipe)
        # bf16/fp16 GEMMs on a CPU without native bf16 dot products: fp32 GEMMs on the same
        # half-valued operands, one rounding (same numbers up to fp32 summation order, 15-35x faster GEMMs).
        with half_gemm_mode(cfg.cpu_half_gemm, session.device):
            code = body(session)
    except BadInput as e:
        print(f"fp8bench: error: {e}", file=sys.stderr)
        if _in_multirun():  # Hydra made this job's dir before the job ran: leave no empty husk
            with contextlib.suppress(OSError):
                Path(cfg.run_dir).rmdir()  # only if empty
        sys.exit(2)
    distributed.leave(session.dist, code)  # torchrun workers only; returns in a single process
    if code and not _in_multirun():
        sys.exit(code)  # under -m a diverged job must not end the sweep: its summary says diverged


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def multirun_dir(cfg) -> None:
    """Under Hydra multirun each job writes into its own subdir of the sweep dir."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hc = HydraConfig.get()
    except ValueError:
        return
    if hc.mode == RunMode.MULTIRUN:
        OmegaConf.set_struct(cfg, False)
        cfg.run_dir = hc.runtime.output_dir
        cfg.sweep = Path(hc.sweep.dir).name
