"""The one validation pass: every check of a composed config, before anything is built.

`validate(cfg, recipe)` runs once, in `Session.__init__`, before the run dir is created, before
the process group starts and before any model, warm-up or step: a bad value is one BadInput line
(`fp8bench: error: ...`, exit 2) that names the value and the valid choices, and leaves nothing on
disk. Types and unknown keys were already refused when the config was composed against the
schemas (bench/config/schema.py) and the CLI overrides checked (bench/config/overrides.py); this
pass checks what a type cannot say: ranges, choices, and what one value means for another (FP8
tile sizes against the model's Linear shapes, a stress module or a kept-module pattern against
the model's module names, a task's sequence length against the model's context, the device).

Model-dependent checks run on the model (either kind, bench/models) built on the meta device: its Linears have their
names and shapes but no storage, so checking a 1B model costs nothing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bench.config.checks import need, positive
from bench.config.groups import check_perturb
from bench.config.groups import (check_generator, check_model, check_grpo, check_logger, check_monitor, check_optim,
                                 check_policy, check_precision, check_stress)
from bench.config.rundir_checks import check_resume, check_run_dir
from bench.core.errors import BadInput
from bench.precision.cpu_gemm import CHOICES as CPU_GEMM_CHOICES
from bench.models.decoder import ModelConfig
from bench.models import load_tokenizer, meta_model
from bench.tasks import Task, build_task


@dataclass
class Checked:
    """What validation built on the way and the session keeps (nothing heavy: no weights)."""
    model: ModelConfig
    task: Task
    device: torch.device
    resume_state: dict | None


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA where available, else CPU; an unavailable or malformed device is bad input."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"device={name} but CUDA is not available here; valid: auto, cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise BadInput(f"device={name!r} is not a torch device; valid: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise BadInput(f"device={name} but this machine has {torch.cuda.device_count()} CUDA devices; "
                       f"valid: cuda:0..cuda:{torch.cuda.device_count() - 1}")
    need(dev.type in ("cpu", "cuda"), f"device={name!r}; valid: auto, cpu, cuda, cuda:N")
    return dev


def world_size() -> int:
    """The torchrun world (WORLD_SIZE), known before the process group starts."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def validate(cfg, recipe: str, dirs: bool = True) -> Checked:
    """Check the whole config; return what the session needs. Raises BadInput on the first problem.
    dirs=False skips the run-dir and resume checks (a sweep checks its jobs before their dirs exist)."""
    check_run(cfg, recipe)
    device = pick_device(cfg.device)
    model_cfg: ModelConfig = OmegaConf.to_object(cfg.model) if OmegaConf.is_config(cfg.model) else cfg.model
    model_cfg = check_model(model_cfg)
    task = check_task(cfg, recipe, model_cfg, load_tokenizer(model_cfg))
    meta = meta_model(model_cfg)  # names and shapes, no storage: free for any model size
    sides = ("precision",) if recipe == "pretrain" else ("trainer_precision", "generator_precision")
    for side in sides:
        check_precision(cfg[side], side, meta, device)
    check_optim(cfg.optim)
    check_logger(cfg.logger)
    check_monitor(cfg.monitor)
    check_policy(cfg.policy)
    check_timing(cfg.timing, device)
    check_parallel(cfg, sides[0])
    if recipe == "pretrain":
        check_stress(cfg.stress, meta)
        check_divisible("batch_size", cfg.batch_size)
    else:
        check_grpo(cfg, task, model_cfg, world_size(), meta)
        check_generator(cfg)
        check_perturb(cfg)
    if not dirs:
        return Checked(model_cfg, task, device, None)
    check_run_dir(Path(cfg.run_dir), cfg.resume)
    state = check_resume(cfg, Path(cfg.run_dir)) if cfg.resume else None
    return Checked(model_cfg, task, device, state)


def check_run(cfg, recipe: str) -> None:
    """The recipe's top-level keys: counts are positive, margins non-negative."""
    positive(cfg, "", "steps", "eval_every", "eval_problems", "checkpoint_every", "keep_checkpoints")
    if recipe == "pretrain":
        positive(cfg, "", "batch_size")
    need(cfg.threads >= 0, f"threads={cfg.threads} must be >= 0; valid: 0 (torch's default) or a thread count")
    need(cfg.cpu_half_gemm in CPU_GEMM_CHOICES,
         f"cpu_half_gemm={cfg.cpu_half_gemm} is not a choice; valid: {', '.join(CPU_GEMM_CHOICES)}")
    need(cfg.seed >= 0, f"seed={cfg.seed} must be >= 0; valid: >= 0")
    # Path("") is ".": an empty run_dir would be the current directory (the repo), not "unset".
    need(str(cfg.run_dir).strip() != "", "run_dir='' is empty (it would mean the current directory); valid: a "
                                         "directory path, or no run_dir= for runs/<recipe>/<run_name>")
    need(cfg.stop_after is None or cfg.stop_after >= 1,
         f"stop_after={cfg.stop_after} must be a step >= 1; valid: null (run to the end) or 1..{cfg.steps}")
    need(cfg.eval_regression_margin >= 0, f"eval_regression_margin={cfg.eval_regression_margin} must be >= 0; valid: >= 0")
    if recipe == "grpo":
        # token_mult_prob_error = mean exp(|r|) >= 1 always: a threshold below 1 fires every step.
        need(cfg.mismatch_spike_threshold >= 1,
             f"mismatch_spike_threshold={cfg.mismatch_spike_threshold} is below 1, the least token_mult_prob_error "
             f"can be, so every step would be a mismatch_spike; valid: >= 1, e.g. 1.5")


def check_task(cfg, recipe: str, model_cfg: ModelConfig, tokenizer=None) -> Task:
    """Build the task (cheap: a textfile is read once, arithmetic tasks are generators) and check
    that its sequences fit the model's context; GRPO needs prompts with a verifiable reward."""
    t = cfg.task
    if t.name == "textfile":
        check_textfile(t)
    try:
        task = build_task(t, tokenizer)
    except (ValueError, TypeError) as e:
        raise BadInput(str(e)) from None
    need(task.seq_len <= model_cfg.max_seq_len,
         f"task {task.name} needs sequences of {task.seq_len} tokens; model.max_seq_len={model_cfg.max_seq_len} "
         f"(valid: a model.max_seq_len >= {task.seq_len} or a shorter task)")
    if recipe == "grpo":
        need(task.prompt_len > 0, f"task={task.name} has no prompts or verifiable reward; "
                                  f"valid for grpo: addition, reversal, arith")
    return task


def check_textfile(t) -> None:
    """A given task.path must be text (UTF-8 without NUL bytes in its first 64 KiB): the tokenizer
    drops what it cannot map, so a binary file would otherwise train on the printable debris.
    A missing path, a missing file and task.window are the task's own checks (bench/tasks)."""
    if OmegaConf.is_missing(t, "path") or not Path(t.path).is_file():
        return
    try:
        with open(t.path, "rb") as f:
            head = f.read(65536)
    except OSError as e:
        raise BadInput(f"task.path={t.path!r} cannot be read ({e.strerror}); valid: a readable text file") from None
    try:
        ok = b"\0" not in head and head.decode("utf-8") is not None
    except UnicodeDecodeError as e:
        ok = e.start >= len(head) - 3  # only a character cut at the 64 KiB boundary
    need(ok, f"task.path={t.path!r} is not a text file (binary or not UTF-8); valid: a plain-text file")


def check_parallel(cfg, side: str) -> None:
    from bench.train import distributed

    reason = distributed.check_parallel(cfg.parallel, cfg[side].name, cfg.policy.action)
    need(reason is None, str(reason))


def check_divisible(key: str, n: int) -> None:
    world = world_size()
    need(n % world == 0, f"{key}={n} is not divisible by the {world} ranks; valid: a multiple of {world}")


def check_timing(t, device) -> None:
    """Timing knobs and the energy source (an explicit source this machine cannot read is bad
    input here, so a sweep refuses it before any job starts)."""
    from omegaconf import OmegaConf

    from bench.perf.energy import EnergyMeter
    from bench.perf.timing import check_config

    timing = OmegaConf.to_object(t)
    check_config(timing)
    EnergyMeter.create(device, timing.energy)  # raises BadInput for a source not readable here
