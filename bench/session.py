"""What every recipe does around its loop: validate, open the run dir, log, checkpoint, summarise.

A recipe calls `Session.start(cfg)` first: every check of user input happens there, before any
compute, and raises BadInput (one line, exit 2). Then the session owns the run directory
(DESIGN.md §4), the logger fan-out, events, the in-run eval-regression detector, checkpoints and
summary.json (status running -> completed | diverged | failed | preempted).
"""
from __future__ import annotations

import contextlib
import signal
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bench import checkpoint as ckpt
from bench import distributed, rundir
from bench.config import pick_device, validate  # noqa: F401  (pick_device: re-exported)
from bench.errors import BadInput
from bench.logger import NullLogger, RunLogger
from bench.model import ModelConfig


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
        self.resume = cfg.resume
        self.dist = distributed.init(self.device)
        if self.dist.is_main:  # rank 0 alone creates and owns the run dir
            self.run_dir = rundir.prepare(cfg.run_dir, self.resume)
        distributed.barrier(self.dist)
        self.run_dir = Path(cfg.run_dir)
        self.resolved = OmegaConf.to_container(cfg, resolve=True)
        self.eval_best: dict[str, float] = {}
        self.eval_regressions: list[dict] = []
        self.stop_requested = None
        self.wall_before = 0.0  # wall time of earlier segments of a resumed run

    # --- start/finish -----------------------------------------------------------------------
    def open(self, total_steps: int, start_step: int) -> None:
        if int(self.cfg.get("threads", 0)) > 0:
            torch.set_num_threads(int(self.cfg.threads))
        self.t0 = time.time()
        if not self.dist.is_main:
            self.log, self.summary = NullLogger(), {"final": {}, "best": {}}
            return
        rundir.atomic_write_text(self.run_dir / "config.yaml", OmegaConf.to_yaml(self.cfg, resolve=True))
        self.log = RunLogger(self.run_dir, self.cfg.get("logger", {}), self.resolved, total_steps,
                             start_step, resume=self.resume)
        self.summary = rundir.read_summary(self.run_dir) if self.resume else {}
        self.summary.update({"status": "running", "recipe": self.recipe, "run_name": self.cfg.run_name,
                             "world_size": self.dist.world,
                             "versions": rundir.versions(), "device": rundir.device_string(self.device)})
        self.summary.setdefault("final", {})
        self.summary.setdefault("best", {})
        self.write_summary()
        if self.resume_state is not None:
            self.event(start_step, "resume", "checkpoint", start_step, 0, "resume")
        # Slurm preemption and Ctrl-C: finish the step in flight, checkpoint, exit cleanly.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._request_stop)

    def should_stop(self, step_done: int) -> bool:
        """SIGTERM/SIGINT arrived, or the configured stop_after step is done (rank 0 decides for
        every rank, so all of them checkpoint and stop at the same step)."""
        after = self.cfg.get("stop_after")
        if after is not None and step_done >= int(after) and not self.stop_requested:
            self.stop_requested = f"stop_after={after}"
        self.stop_requested = distributed.from_main(self.stop_requested, self.dist)
        return self.stop_requested is not None

    def _request_stop(self, signum, frame):
        self.stop_requested = signal.Signals(signum).name

    def event(self, step, kind, where, value, threshold, action):
        self.log.log_event({"step": int(step), "kind": kind, "where": where, "value": float(value),
                            "threshold": float(threshold), "action": action})

    def emit(self, ev: dict):
        self.log.log_event(ev)

    def write_summary(self):
        if not self.dist.is_main:
            return
        self.summary["wall_s"] = round(time.time() - self.t0 + self.wall_before, 3)
        rundir.write_summary(self.run_dir, self.summary)

    def finish(self, status: str, step: int) -> int:
        """Write the final summary, close sinks; returns the process exit code."""
        self.summary.update({"status": status, "steps_completed": step, "eval_regressions": self.eval_regressions})
        self.write_summary()
        code = {"completed": 0, "preempted": 0, "diverged": 1}.get(status, 1)
        self.log.close(code)
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

    def log_eval(self, step: int, values: dict):
        """Log an eval and flag a drop below this run's own best by more than the margin."""
        self.log.log_eval(step, values)
        margin = float(self.cfg.get("eval_regression_margin", 0.1))
        for k, v in values.items():
            higher = k.endswith("accuracy")
            best = self.eval_best.get(k)
            # Accuracy only: a relative rise of a near-zero loss is noise, not forgetting
            # (loss regressions across runs are the gate's job).
            if best is not None and higher:
                drop = best - v
                if drop > margin:
                    self.eval_regressions.append({"step": step, "metric": k, "value": v, "best": best, "drop": drop})
                    self.event(step, "eval_regression", k, v, best, "log")
            if best is None or (v > best if higher else v < best):
                self.eval_best[k] = v
            self.summary["final"][k] = v
            self.summary["best"][k] = self.eval_best[k]
        self.write_summary()

    # --- checkpoints ------------------------------------------------------------------------
    def save(self, step: int, state: dict):
        if not self.dist.is_main:
            return
        state = {**state, "step": step, "rng": ckpt.rng_state(), "eval_best": self.eval_best,
                 "eval_regressions": self.eval_regressions, "wall_s": time.time() - self.t0 + self.wall_before}
        ckpt.save(self.run_dir / "checkpoints", step, state, keep=int(self.cfg.get("keep_checkpoints", 2)))

    def restore_common(self, state: dict) -> int:
        ckpt.set_rng_state(state["rng"])
        self.eval_best = dict(state.get("eval_best", {}))
        self.eval_regressions = list(state.get("eval_regressions", []))
        self.wall_before = float(state.get("wall_s", 0.0))
        return int(state["step"])


def run_recipe(cfg, recipe: str, body) -> None:
    """Run `body(session)` with the exit-code contract: 2 bad input, 1 diverged/failed, 0 ok."""
    try:
        session = Session(cfg, recipe)
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
