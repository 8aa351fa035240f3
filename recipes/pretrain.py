"""Pretrain a small LM in one precision and record what the precision costs.

    python -m recipes.pretrain model=tiny task=addition precision=fp8_tensorwise steps=200 seed=0

Reads top to bottom: validate -> build model -> apply precision -> train with monitors and the
instability policy -> evaluate -> summarise. Every check of user input runs before any compute.
"""
from __future__ import annotations

import time

import hydra
import torch
import torch.nn.functional as F

from bench import distributed
from bench.errors import BadInput
from bench.eval import evaluate
from bench.model import Transformer
from bench.numerics.monitor import NumericsMonitor
from bench.numerics.policy import InstabilityPolicy
from bench.numerics.stress import OutlierInjector
from bench.precision.engines import apply_precision, plan_precision
from bench.recipe_utils import check_overrides, print_precision_state
from bench.session import Session, multirun_dir, run_recipe, typed
from bench.training import OptimConfig, Trainer


def train(s: Session) -> int:
    cfg, task, device = s.cfg, s.task, s.device
    parallel = str(cfg.get("parallel", "ddp"))
    if (reason := distributed.check_parallel(parallel, cfg.precision.name, cfg.policy.get("action", "log"))):
        raise BadInput(reason)

    # 1. Model and precision: plan (validates recipe, engine, shapes), then swap the Linears.
    torch.manual_seed(cfg.seed)
    model = Transformer(s.model_cfg).to(device)
    plan, engine = plan_precision(model, cfg.precision, device)
    policy = InstabilityPolicy(cfg.policy, emit=lambda ev: s.emit(ev))
    stress = OutlierInjector(model, cfg.stress)  # validates stress.module before any compute
    apply_precision(model, plan, engine)
    stress.rehook(model)  # hook the module that now sits at that name
    monitor = NumericsMonitor(model, plan, cfg.monitor.interval, cfg.monitor.shadow, cfg.monitor.per_module)
    # DDP under torchrun (a wrapper), FSDP2 (shards in place: before the optimizer is built).
    forward = distributed.wrap(model, s.dist, parallel)
    trainer = Trainer(model, typed(OptimConfig, cfg.optim, "optim"), cfg.steps, plan, engine, monitor, policy,
                      emit=lambda ev: s.emit(ev), device=device, loss_scale_cfg=cfg.precision.get("loss_scale"),
                      dist_info=s.dist)

    # 2. Resume: model (with FP8 amax histories), optimizer, scheduler, scaler, detectors, RNG.
    start = 0
    if s.resume_state is not None:
        trainer.load_state_dict(s.resume_state["trainer"])
        start = s.restore_common(s.resume_state)
        stress.rehook(model)
    s.open(cfg.steps, start)
    s.summary["engines"] = {"precision": plan.engine}
    s.summary["parallel"] = ("fsdp" if distributed.is_sharded(model) else "ddp") if s.dist.enabled else "none"
    if s.dist.is_main:
        print_precision_state({"precision": plan}, model, device)

    # 3. Train. The batch at step k is a pure function of (seed, k): resume needs no loader state.
    status, step = "completed", start
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            monitor.begin_step(step)
            stress.set_step(step)
            batch = task.lm_batch("train", cfg.batch_size, cfg.seed * 1_000_003 + step)
            inputs, targets, mask = (distributed.shard(t, s.dist).to(device) for t in batch)
            with trainer.context():
                logits = forward(inputs)
            ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
            loss = (ce * mask.flatten()).sum() / mask.sum()
            trainer.backward(loss)
            metrics, decision = trainer.step(step, float(loss.detach()), int(mask.numel()), t0)
            if decision.fallback:
                stress.rehook(model)
            s.log_metrics(step, metrics)
            if decision.halt:
                status = "diverged"
                break
            # FSDP: every rank runs the eval (its forwards all-gather); rank 0 alone logs it.
            if ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps) and (s.dist.is_main or parallel == "fsdp"):
                s.log_eval(step + 1, evaluate(model, task, trainer.context, device, cfg.eval_problems))
            stop = s.should_stop(step + 1)
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or stop:
                s.save(step + 1, {"trainer": trainer.state_dict()})
            if stop:
                s.event(step + 1, "preempt", s.stop_requested, step + 1, 0, "checkpoint_and_exit")
                status = "preempted"
                break
        else:
            step = cfg.steps - 1
    except Exception:
        s.finish("failed", step)
        raise
    finally:
        monitor.close()
    return s.finish(status, step + 1 if status != "diverged" else step)


@hydra.main(config_path="../conf", config_name="pretrain", version_base="1.3")
def main(cfg) -> None:
    multirun_dir(cfg)
    run_recipe(cfg, "pretrain", train)


if __name__ == "__main__":
    check_overrides("pretrain")
    main()
