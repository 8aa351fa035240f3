"""One logger, three sinks: the run dir's JSONL (always), a console progress bar, and wandb.

wandb mode: `online` when WANDB_API_KEY is set, else `offline` (synced later with `wandb sync`);
`disabled` in tests. wandb mirrors the JSONL names exactly and is never the only copy: any wandb
failure is reported once and the sink is dropped, so an outage never stops a run.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from bench.rundir import JsonlWriter


class WandbSink:
    def __init__(self, cfg, run_dir: Path, resolved_config: dict, resume: bool):
        """cfg: the `logger.wandb` config. project/entity/group keep their .get defaults until the
        typed logger schema exists: conf/logger/disabled.yaml does not define them."""
        mode = cfg.mode
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        self.run = None
        if mode == "disabled":
            return
        try:
            import wandb

            rc = resolved_config
            precision = rc.get("precision", {}).get("name") or (
                f"{rc.get('trainer_precision', {}).get('name')}/{rc.get('generator_precision', {}).get('name')}")
            self.run = wandb.init(
                project=cfg.get("project", "fp8bench"), entity=cfg.get("entity"), mode=mode,
                dir=str(run_dir), name=rc.get("run_name"), config=rc,
                group=cfg.get("group") or rc.get("sweep") or rc.get("recipe"),
                job_type=rc.get("recipe"),
                tags=[t for t in (rc.get("recipe"), precision, rc.get("task", {}).get("name"), rc.get("sweep")) if t],
                id=rc.get("wandb_id") or self._previous_id(run_dir, resume), resume="allow" if resume else None,
                settings=wandb.Settings(silent=True),
            )
            # A resumed run continues the same wandb run: one wandb run per job, preempted or not.
            (Path(run_dir) / "wandb").mkdir(exist_ok=True)
            (Path(run_dir) / "wandb" / "fp8bench_run_id").write_text(self.run.id)
            # train/*, eval/*, numerics/* ... all share the trainer step as their x axis.
            self.run.define_metric("step")
            self.run.define_metric("*", step_metric="step")
        except Exception as e:  # never let wandb stop a run
            print(f"fp8bench: wandb disabled for this run ({type(e).__name__}: {e})", file=sys.stderr)
            self.run = None

    @staticmethod
    def _previous_id(run_dir, resume: bool):
        f = Path(run_dir) / "wandb" / "fp8bench_run_id"
        return f.read_text().strip() if resume and f.is_file() else None

    def log(self, record: dict):
        if self.run is None:
            return
        try:
            self.run.log(record)
        except Exception as e:
            print(f"fp8bench: wandb logging failed, continuing without it ({e})", file=sys.stderr)
            self.run = None

    def finish(self, exit_code: int = 0):
        if self.run is not None:
            try:
                self.run.finish(exit_code=exit_code)
            except Exception:
                pass
            self.run = None


class RunLogger:
    """log_metrics / log_eval / log_event write JSONL first, then mirror to console and wandb."""

    def __init__(self, run_dir: Path, logger_cfg, resolved_config: dict, total_steps: int,
                 start_step: int = 0, resume: bool = False, wall_offset: float = 0.0):
        """wall_offset: wall time of the earlier segments of a resumed run (at its checkpoint), so
        `wall_s` continues where the kept lines stop instead of restarting at 0."""
        self.run_dir = Path(run_dir)
        self.t0 = time.time() - wall_offset
        self.metrics = JsonlWriter(self.run_dir / "metrics.jsonl")
        self.evals = JsonlWriter(self.run_dir / "evals.jsonl")
        self.events = JsonlWriter(self.run_dir / "events.jsonl")
        self.wandb = WandbSink(logger_cfg.wandb, self.run_dir, resolved_config, resume)
        self.console_every = int(logger_cfg.console_every)
        self.progress = None
        if logger_cfg.progress and total_steps > 0:
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False,
                                     disable=not sys.stdout.isatty())
            self.task = self.progress.add_task(resolved_config.get("run_name", "run"), total=total_steps,
                                               completed=start_step, info="")
            self.progress.start()

    def wall_s(self) -> float:
        return time.time() - self.t0

    def log_metrics(self, step: int, values: dict):
        rec = {"step": step, "wall_s": round(self.wall_s(), 3), **values}
        self.metrics.write(rec)
        self.wandb.log(rec)
        if self.progress is not None:
            info = "  ".join(f"{k.split('/')[-1]}={values[k]:.4g}" for k in
                             ("train/loss", "rollout/reward_mean", "mismatch/token_mult_prob_error") if k in values)
            self.progress.update(self.task, completed=step + 1, info=info)
            if not sys.stdout.isatty() and step % self.console_every == 0:
                print(f"step {step:>5}  {info}", flush=True)

    def log_eval(self, step: int, values: dict):
        rec = {"step": step, **values}
        self.evals.write(rec)
        self.wandb.log(rec)
        print(f"eval @ {step}: " + "  ".join(f"{k}={v:.4g}" for k, v in values.items()), flush=True)

    def log_event(self, event: dict):
        """event: an Event's to_dict() (bench/events.py)."""
        self.events.write(event)
        self.wandb.log({"step": event["step"], f"events/{event['kind']}": event.get("value")})
        stat = f" {event['stat']}" if event.get("stat") else ""
        print(f"event @ {event['step']}: {event['kind']} at {event['where']} "
              f"(value{stat}={event['value']:.4g}, threshold={event['threshold']:.4g}) -> {event['action']}", flush=True)

    def close(self, exit_code: int = 0):
        if self.progress is not None:
            self.progress.stop()
        for w in (self.metrics, self.evals, self.events):
            w.close()
        self.wandb.finish(exit_code)


class NullLogger:
    """What non-zero ranks get: the same interface, no files, no console, no wandb."""

    def wall_s(self) -> float:
        return 0.0

    def log_metrics(self, step, values):
        pass

    def log_eval(self, step, values):
        pass

    def log_event(self, event):
        pass

    def close(self, exit_code: int = 0):
        pass
