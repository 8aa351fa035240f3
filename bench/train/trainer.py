"""The optimizer step both recipes share, with the precision machinery around it.

One `Trainer.step` = forward under the precision's autocast (+ the FP8 engine's context),
backward (loss-scaled for fp16), unscale, clip, then the checks of bench/numerics/policy.py
decide whether the update is applied, skipped, the run halts, or modules fall back to bf16.
Master weights and AdamW state stay fp32 in every precision.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from bench.train import distributed
from bench.core.errors import BadInput
from bench.numerics.monitor import NumericsMonitor
from bench.numerics.policy import Decision, InstabilityPolicy
from bench.core.events import Event
from bench.precision.mixed import autocast_context
from bench.precision.plan import PrecisionPlan
from bench.perf.timing import phase


@dataclass
class OptimConfig:
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0


def lr_lambda(cfg: OptimConfig, total_steps: int):
    """Multiplier of lr at optimizer step `step` (0-based):

        step < W:            (step + 1) / W                                   linear warm-up
        otherwise:           r + (1 - r) · ½ (1 + cos(π · t)),  t = min(1, (step - W) / (T - W))

    with W = warmup_steps, r = min_lr_ratio, T = total_steps: a cosine from lr down to lr·r at
    step T, then flat at lr·r. T is the run's *original* length, also on a resume that extends
    `steps` (see `schedule_total`): steps past T continue at the final lr·r, so an extension never
    re-warms the learning rate."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def schedule_total(saved_total: int | None, steps: int) -> int:
    """The T of `lr_lambda` for a run asked to go to `steps`: the total the run's schedule was
    first built with (kept in its checkpoints) when resuming, else `steps`. Re-deriving T from a
    larger `steps` would move every point of the cosine: 50 -> 60 steps jumped lr from 3e-4 to
    6.2e-4 at step 51. Checkpoints from before the total was kept carry None: their `steps`."""
    return steps if saved_total is None else int(saved_total)


class Trainer:
    def __init__(self, model: nn.Module, optim: OptimConfig, total_steps: int, plan: PrecisionPlan, engine,
                 monitor: NumericsMonitor, policy: InstabilityPolicy, emit, device: torch.device,
                 loss_scale_cfg=None, dist_info: distributed.DistInfo | None = None):
        self.dist = dist_info or distributed.DistInfo()
        self.model, self.optim_cfg, self.plan, self.engine = model, optim, plan, engine
        self.monitor, self.policy, self.emit, self.device = monitor, policy, emit, device
        decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps)
        self.schedule_total = total_steps  # the cosine's T; a resume restores the run's original one
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(optim, total_steps))
        # fp16's loss_scale group (LossScale in bench/config/schema.py holds the defaults); a caller
        # without a config (benchmarks) gets torch's own GradScaler defaults.
        ls = {k: loss_scale_cfg[k] for k in ("init_scale", "growth_interval")} if loss_scale_cfg else {}
        self.scaler = torch.amp.GradScaler(device.type, enabled=plan.name == "fp16", **ls)

    def context(self):
        """Forward context: autocast of the precision, plus the engine's (TE fp8_autocast)."""
        ctx = autocast_context(self.plan.name, self.device)
        if self.engine is None:
            return ctx
        eng_ctx = self.engine.context(self.plan.recipe)

        class Both:
            def __enter__(s):
                ctx.__enter__()
                eng_ctx.__enter__()

            def __exit__(s, *a):
                eng_ctx.__exit__(*a)
                return ctx.__exit__(*a)
        return Both()

    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, step: int, loss_value: float, tokens: int, t0: float) -> tuple[dict, Decision]:
        """Finish an optimizer step whose backward has run: checks, policy, update, metrics."""
        self.scaler.unscale_(self.opt)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = 0.0
        if params:
            norm = torch.nn.utils.clip_grad_norm_(params, self.optim_cfg.grad_clip)
            # FSDP2: the norm of sharded DTensor grads is itself a DTensor; the global value.
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        scaler_overflow = self.scaler.is_enabled() and not math.isfinite(grad_norm)
        with phase("monitor"):  # the numerics checks; their collectives are comm (nested)
            numerics = self.monitor.collect()
            detections = self.numerics_detections(bool(numerics))
            loss_value = distributed.mean(loss_value, self.dist)  # the global batch's loss on every rank
            decision = self.policy.check(step, loss_value, None if scaler_overflow else grad_norm,
                                         self.monitor.nonfinite_count(), detections)
            decision = distributed.from_main(decision, self.dist)
        if scaler_overflow:  # fp16: the scaler skips the update and backs the scale off
            self.emit(Event(step, "skip_step", "loss_scaler", float("inf"), float(self.scaler.get_scale()),
                            "skip_step").to_dict())
        lr = self.opt.param_groups[0]["lr"]
        if decision.skip or decision.halt:
            self.opt.zero_grad(set_to_none=True)
            self.scaler.update()
        else:
            self.scaler.step(self.opt)
            self.scaler.update()
            self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        for name in decision.fallback:
            if self.plan.fallback(self.model, name, step):  # recorded in plan.summary() with its step
                self.emit(Event(step, "fallback", name, 1.0, 0.0, "fallback").to_dict())
        if decision.fallback:
            self.monitor.attach()
        dt = time.perf_counter() - t0
        metrics = {"train/loss": loss_value, "train/grad_norm": grad_norm, "train/lr": lr,
                   "train/step_time_s": dt, "train/tokens_per_s": tokens / dt if dt > 0 else 0.0,
                   "numerics/nonfinite_count": self.monitor.nonfinite_count(), **numerics}
        if self.scaler.is_enabled():
            metrics["train/loss_scale"] = float(self.scaler.get_scale())
        return metrics, decision

    def numerics_detections(self, sampled: bool) -> list[tuple[str, str, str, float]]:
        """(kind, module, role, value) above the policy's thresholds. Overflow: every step, from
        the clamp counts of every FP8 cast (one host sync); on sampled steps also from the
        statistics of tensors whose casts are not counted (torchao/TE modules). Underflow: from
        the statistics, sampled steps only."""
        clamped = self.monitor.clamp_fracs()
        over = self.policy.threshold("overflow")
        out = [("overflow", m, r, v) for (m, r), v in clamped.items() if v > over]
        if sampled:
            out += [d for d in self.policy.numerics_detections(self.monitor.records)
                    if d[0] != "overflow" or (d[1], d[2]) not in clamped]
        return out

    def state_dict(self) -> dict:
        """Everything resume needs. Under FSDP2 a collective: full state gathered onto rank 0."""
        sharded = distributed.is_sharded(self.model)
        if sharded:
            model_sd, opt_sd = distributed.full_state(self.model, self.opt)
        else:
            model_sd, opt_sd = self.model.state_dict(), self.opt.state_dict()
        return {"model": model_sd, "opt": opt_sd, "opt_format": "fqn" if sharded else "ids",
                "sched": self.sched.state_dict(), "schedule_total": self.schedule_total, "scaler": self.scaler.state_dict(), "policy": self.policy.state_dict(),
                "fallbacks": dict(self.plan.fallbacks)}

    def load_state_dict(self, s: dict) -> None:
        fallbacks = s["fallbacks"]  # modules that fell back before the checkpoint stay bf16
        if isinstance(fallbacks, list):  # checkpoints before fallbacks carried their step
            fallbacks = {n: -1 for n in fallbacks}
        for name, at in fallbacks.items():
            self.plan.fallback(self.model, name, at)
        self.monitor.attach()
        sharded, fqn = distributed.is_sharded(self.model), s.get("opt_format", "ids") == "fqn"
        if sharded != fqn:  # optimizer state keyed by parameter name (FSDP) vs by index (plain/DDP)
            raise BadInput("this checkpoint was written with parallel=" + ("fsdp" if fqn else "ddp or one process") +
                             "; resume it the same way")
        if sharded:
            distributed.load_full_state(self.model, self.opt, s["model"], s["opt"])
        else:
            self.model.load_state_dict(s["model"])
            self.opt.load_state_dict(s["opt"])
        self.sched.load_state_dict(s["sched"])
        # The schedule is the one the run started with, whatever `steps` the resume asks for.
        self.schedule_total = schedule_total(s.get("schedule_total"), self.schedule_total)
        self.sched.lr_lambdas = [lr_lambda(self.optim_cfg, self.schedule_total)] * len(self.opt.param_groups)
        self.scaler.load_state_dict(s["scaler"])
        self.policy.load_state_dict(s["policy"])
