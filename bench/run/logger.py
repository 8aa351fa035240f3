"""One logger, three sinks: the run dir's JSONL (always), the console, and wandb.

The console says what the harness means to say and nothing else:
- a live rich progress bar (on a TTY) updated every step with the key metrics, plus a plain line
  every `logger.console_every` steps and at the last step (above the bar on a TTY; the only
  progress off a TTY, e.g. in a Slurm log);
- every line of a sweep job starts with `[<job>]` (its run dir's name), so parallel jobs that
  share one terminal can be told apart;
- an event repeated at one (kind, site) is printed the first time, then as a count every
  `logger.events_every` occurrences and once more when the run closes (events.jsonl keeps every
  one): default mxfp8 with floor scales once printed 168 overflow lines in 30 steps;
- two known start-up messages that are not the harness's are filtered, exactly (see
  `filter_known_noise`).

wandb mode (`wandb_mode`): `auto` follows WANDB_MODE when it is set, else `online` with an API key
(WANDB_API_KEY, or the ~/.netrc entry `wandb login` writes), else `offline` (synced later with
`wandb sync`); `disabled` in tests. `online` asked for (by logger.wandb.mode or WANDB_MODE) without
an API key runs offline, as wandb itself would, but says so in one warning line. wandb mirrors
the JSONL names exactly and is never the only copy: any wandb failure is reported once and the
sink is dropped, so an outage never stops a run.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from bench.core.jsonl import JsonlWriter

KEY_METRICS = ("train/loss", "rollout/reward_mean", "mismatch/token_mult_prob_error")


class _DropMessages(logging.Filter):
    """Drops records of one logger whose message contains one of `needles`; passes all else."""

    def __init__(self, *needles: str):
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in self.needles)


def filter_known_noise() -> None:
    """Filter exactly two start-up warnings that read like a broken install and are not:

    - torchao's `Failed to load .../torchao/_C_mxfp8...so` (and `_C_cutlass_90a`): torchao tries
      its prebuilt CUDA kernel libraries at import and logs each one that cannot load. Without
      CUDA they cannot, and fp8bench does not use them (the reference engine and torchao's
      emulated path run on CPU). Filtered only when CUDA is absent: on a GPU the failure matters.
    - torch's `<enum '...'> is an Enum subclass and is now natively supported by torch.compile
      ... register_constant() on Enum subclasses is deprecated`: torch.utils._pytree logs it when
      torchao registers its enums; a deprecation for torchao's authors, not for the user.

    Filters sit on those two loggers only (never the root), match the message text, and are
    added once; every other warning and every error still prints."""
    import torch

    targets = [("torch.utils._pytree", "is an Enum subclass and is now natively supported by torch.compile")]
    if not torch.cuda.is_available():
        targets.append(("torchao", "Failed to load"))
    for name, needle in targets:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and needle in f.needles for f in log.filters):
            log.addFilter(_DropMessages(needle))


filter_known_noise()  # at import: before bench.precision.engines imports torchao (lazily)


def job_name(run_dir: Path, sweep: str | None) -> str | None:
    """A sweep job's name: its run dir below the sweep dir (named `sweep`). Usually one folder
    (`3_precision=bf16,seed=1`), more when an override's value is a path (Hydra puts the value
    in the folder name as is, `/` included). None outside a sweep."""
    if not sweep:
        return None
    parts = Path(run_dir).parts
    below = [i for i, p in enumerate(parts[:-1]) if p == sweep]
    return "/".join(parts[below[-1] + 1:]) if below else Path(run_dir).name


class RepeatedEvents:
    """Console summary of events repeated at one (kind, where): `show(ev)` returns the line to
    print, or None while the repeat is only counted; `pending()` the count lines still owed at
    the end. A `halt` action is always printed (it ends the run)."""

    def __init__(self, every: int):
        self.every = max(1, int(every))
        self.seen: dict[tuple[str, str], dict] = {}

    def show(self, ev: dict, line: str) -> str | None:
        key = (ev["kind"], ev["where"])
        s = self.seen.get(key)
        if s is None or ev["action"] == "halt":
            self.seen.setdefault(key, {"n": 0, "unprinted": 0, "first": ev["step"], "last": ev})
            self.seen[key]["n"] += 1
            return line
        s["n"] += 1
        s["unprinted"] += 1
        s["last"] = ev
        if s["n"] % self.every == 0:
            return self._count_line(key, s)
        return None

    def _count_line(self, key, s) -> str:
        last = s["last"]
        s["unprinted"] = 0
        return (f"event x{s['n']}: {key[0]} at {key[1]} since step {s['first']} "
                f"(last @ {last['step']}: value={last['value']:.4g}) -> {last['action']}")

    def pending(self) -> list[str]:
        return [self._count_line(k, s) for k, s in self.seen.items() if s["unprinted"]]


def wandb_host() -> str:
    """The host the API key is for: WANDB_BASE_URL's, else wandb's cloud."""
    from urllib.parse import urlsplit

    return urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc or "api.wandb.ai"


def has_api_key() -> bool:
    """wandb can log in without a prompt: WANDB_API_KEY, or a .netrc entry for the host (the file
    `wandb login` writes; NETRC names another file, as for wandb). Never contacts the network."""
    import netrc

    if os.environ.get("WANDB_API_KEY", "").strip():
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC") or Path.home() / ".netrc").authenticators(wandb_host()) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(configured: str, run_dir: Path) -> tuple[str, str | None]:
    """(the mode to pass to wandb.init, a warning line or None). wandb.init's `mode` argument beats
    WANDB_MODE, so under `auto` the variable is read here or it would be ignored (WANDB_MODE=disabled
    used to write an offline run). `online` without a key: wandb silently falls back to offline;
    here the fallback is explicit (no login attempt) and the user is told how to get the data up."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    env = {"dryrun": "offline", "run": "online"}.get(env, env)
    if configured == "auto" and env not in ("online", "offline", "disabled"):
        return ("online" if has_api_key() else "offline"), None
    mode, asked = ((env, f"WANDB_MODE={env}") if configured == "auto"
                   else (configured, f"logger.wandb.mode={configured}"))
    if mode != "online" or has_api_key():
        return mode, None
    return "offline", (f"fp8bench: warning: {asked} but no wandb API key (no WANDB_API_KEY, no .netrc entry for "
                       f"{wandb_host()}): this run logs to wandb offline; upload it with `wandb sync "
                       f"{Path(run_dir) / 'wandb'}/offline-run-*`, or run `wandb login` first to log online")


class WandbSink:
    def __init__(self, cfg, run_dir: Path, resolved_config: dict, resume: bool):
        """cfg: the `logger.wandb` config (WandbConfig in bench/config/schema.py: every key present)."""
        mode, warning = wandb_mode(cfg.mode, run_dir)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        self.run = None
        if mode == "disabled":
            return
        try:
            import wandb

            rc = resolved_config
            precision = rc.get("precision", {}).get("name") or (
                f"{rc.get('trainer_precision', {}).get('name')}/{rc.get('generator_precision', {}).get('name')}")
            self.run = wandb.init(
                project=cfg.project, entity=cfg.entity, mode=mode,
                dir=str(run_dir), name=rc.get("run_name"), config=rc,
                group=cfg.group or rc.get("sweep") or rc.get("recipe"),
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
        self.total_steps = total_steps
        self.repeats = RepeatedEvents(logger_cfg.events_every)
        # Under a sweep (cfg.sweep is set by session.multirun_dir) every line names its job.
        self.job = job_name(self.run_dir, resolved_config.get("sweep"))
        self.prefix = f"[{self.job}] " if self.job else ""
        self.last_eval = ""
        self.progress = None
        if logger_cfg.progress and total_steps > 0 and sys.stdout.isatty():
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
            name = self.job or resolved_config.get("run_name", "run")
            self.task = self.progress.add_task(name, total=total_steps, completed=start_step, info="")
            self.progress.start()

    def say(self, line: str) -> None:
        """One console line, prefixed with the sweep job's name; above the live bar on a TTY."""
        if self.progress is not None:
            self.progress.console.print(self.prefix + line, markup=False, highlight=False)
        else:
            print(self.prefix + line, flush=True)

    def wall_s(self) -> float:
        return time.time() - self.t0

    def log_metrics(self, step: int, values: dict):
        rec = {"step": step, "wall_s": round(self.wall_s(), 3), **values}
        self.metrics.write(rec)
        self.wandb.log(rec)
        info = "  ".join(f"{k.split('/')[-1]}={values[k]:.4g}" for k in KEY_METRICS if k in values)
        if self.progress is not None:
            self.progress.update(self.task, completed=step + 1, info=" ".join(p for p in (info, self.last_eval) if p))
        if step % self.console_every == 0 or step + 1 == self.total_steps:
            self.say(f"step {step:>5}  {info}")

    def log_eval(self, step: int, values: dict):
        rec = {"step": step, **values}
        self.evals.write(rec)
        self.wandb.log(rec)
        acc = [f"{k.split('/')[-2]}_acc={v:.3g}" for k, v in values.items() if k.endswith("/accuracy")]
        self.last_eval = " ".join(acc)
        self.say(f"eval @ {step}: " + "  ".join(f"{k}={v:.4g}" for k, v in values.items()))

    def log_event(self, event: dict):
        """event: an Event's to_dict() (bench/core/events.py). Every event goes to events.jsonl and
        wandb; the console gets the first of each (kind, where) and then counts."""
        self.events.write(event)
        self.wandb.log({"step": event["step"], f"events/{event['kind']}": event.get("value")})
        stat = f" {event['stat']}" if event.get("stat") else ""
        line = (f"event @ {event['step']}: {event['kind']} at {event['where']} "
                f"(value{stat}={event['value']:.4g}, threshold={event['threshold']:.4g}) -> {event['action']}")
        shown = self.repeats.show(event, line)
        if shown is not None:
            self.say(shown)

    def close(self, exit_code: int = 0):
        for line in self.repeats.pending():  # the repeats not yet counted on the console
            self.say(line)
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
