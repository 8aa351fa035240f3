"""Pretrain a small LM in one precision and record what the precision costs.

    python -m recipes.pretrain model=tiny task=addition precision=fp8_tensorwise steps=200 seed=0

Reads top to bottom: validate -> build model -> apply precision -> train with monitors and the
instability policy -> evaluate -> summarise. Every check of user input runs before any compute;
the session (bench/run/session.py) keeps the run dir, evals, checkpoints, preemption and status.
"""
from __future__ import annotations

import time

import hydra
import torch

from bench.train import distributed
from bench.train.eval import evaluate
from bench.models.lm_loss import masked_cross_entropy
from bench.models import build_model
from bench.numerics.monitor import NumericsMonitor
from bench.numerics.stress import OutlierInjector
from bench.precision.plan import apply_precision, plan_precision
from bench.run.entrypoint import check_overrides, print_precision_state
from bench.run.session import Session, multirun_dir, run_recipe, typed
from bench.train.trainer import OptimConfig, Trainer


def train(s: Session) -> int:
    cfg, task, device = s.cfg, s.task, s.device

    # 1. Model and precision: plan (validates recipe, engine, shapes), then swap the Linears.
    torch.manual_seed(cfg.seed)
    model = build_model(s.model_cfg, device)
    plan, engine = plan_precision(model, cfg.precision, device)
    policy = s.instability_policy(signals=("loss", "grad_norm"), spikes=("loss", "grad_norm"))
    stress = OutlierInjector(model, cfg.stress)  # validates stress.module before any compute
    apply_precision(model, plan, engine)
    stress.rehook(model)  # hook the module that now sits at that name
    monitor = NumericsMonitor(model, plan, cfg.monitor.interval, cfg.monitor.shadow, cfg.monitor.per_module)
    # DDP under torchrun (a wrapper), FSDP2 (shards in place: before the optimizer is built).
    forward = distributed.wrap(model, s.dist, cfg.parallel)
    trainer = Trainer(model, typed(OptimConfig, cfg.optim, "optim"), cfg.steps, plan, engine, monitor, policy,
                      emit=s.emit, device=device, loss_scale_cfg=cfg.precision.get("loss_scale"), dist_info=s.dist)

    # 2. Resume: model (with FP8 amax histories), optimizer, scheduler, scaler, detectors, RNG.
    start = 0
    if s.resume_state is not None:
        trainer.load_state_dict(s.resume_state["trainer"])
        start = s.restore_common(s.resume_state)
        stress.rehook(model)
    s.open(cfg.steps, start, model)
    s.summary["engines"] = {"precision": plan.engine}
    s.plans = {"precision": plan}  # summary.json: FP8 modules and fallbacks (with their step)
    if s.dist.is_main:
        print_precision_state({"precision": plan}, model, device)

    def run_eval(step: int) -> dict:
        return evaluate(model, task, trainer.context, device, cfg.eval_problems, cfg.eval_kv_cache)

    def state() -> dict:
        return {"trainer": trainer.state_dict()}

    # 3. Train. The batch at step k is a pure function of (seed, k): resume needs no loader state.
    with s.running(monitor.close):
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            s.begin_step(step)  # time/<phase>_s of this step, eval and checkpoint included (bench/perf/timing.py)
            with s.phase("monitor"):
                monitor.begin_step(step)
                stress.set_step(step)
            with s.phase("data_wait"):
                batch = task.lm_batch("train", cfg.batch_size, cfg.seed * 1_000_003 + step)
                inputs, targets, mask = (distributed.shard(t, s.dist).to(device) for t in batch)
            with s.phase("update"):  # forward, backward, optimizer; DDP's all-reduce is comm (its hook)
                with trainer.context():
                    logits = forward(inputs)
                loss = masked_cross_entropy(logits, targets, mask)
                trainer.backward(loss)
                metrics, decision = trainer.step(step, float(loss.detach()), int(mask.numel()), t0)
                if decision.fallback:
                    stress.rehook(model)
            # tokens: this rank's shard (its device's joules; tokens/s as Trainer.step counts it)
            if not s.end_step(step, metrics, decision.halt, run_eval, state, tokens=int(mask.numel())):
                break
    return s.finish()


@hydra.main(config_path="../conf", config_name="pretrain", version_base="1.3")
def main(cfg) -> None:
    multirun_dir(cfg)
    run_recipe(cfg, "pretrain", train)


if __name__ == "__main__":
    check_overrides("pretrain")
    main()
