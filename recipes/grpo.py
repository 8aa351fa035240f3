"""GRPO with a separate generator engine: what the trainer/generator precision gap costs.

    python -m recipes.grpo model=tiny task=addition trainer_precision=bf16 \
        generator_precision=fp8_blockwise is_correction=tis steps=100 seed=0

Each step: refit the generator from the trainer's weights (its own copy, its own precision and
KV cache) -> sample G completions per prompt -> exact-match rewards -> group advantages ->
trainer recomputes the sampled tokens' log-probs (pi_old, trainer precision) -> mismatch metrics
and IS weights from (generator, trainer) log-probs -> PPO-clipped updates -> log.

Scale-out (`torchrun --nproc_per_node=N -m recipes.grpo ...`): rank r samples the r-th contiguous
slice of the step's prompts (whole groups), all ranks gather the per-row tensors so mismatch, IS
and rollout numbers are those of the global batch, and DDP averages the update's gradients.
`grpo.rollout_shards=N` in one process samples the same N shards in a loop and reproduces the
N-process run's tokens exactly (bench/rl/rollout_shards.py).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import hydra
import torch

from bench import distributed
from bench.errors import BadInput
from bench.eval import evaluate
from bench.generation import Generator
from bench.model import Transformer, token_logprobs
from bench.numerics.monitor import NumericsMonitor
from bench.numerics.policy import InstabilityPolicy
from bench.precision.engines import apply_precision, plan_precision
from bench.recipe_utils import check_overrides, print_precision_state
from bench.rl.grpo import GRPOConfig, group_advantages, masked_mean, policy_loss, token_entropy
from bench.rl.importance import check_options, importance_weights
from bench.rl.mismatch import mismatch_metrics
from bench.rl.plots import plot_worst_sequence
from bench.rl.rollout_shards import (gather_rows, local_shards, minibatch_rows, resolve_shards, shard_seed,
                                     token_norm, token_weighted_mean)
from bench.rl.warmstart import load_policy_weights, supervised_warmup
from bench.session import Session, multirun_dir, run_recipe, typed
from bench.tasks.tokenizer import EOS
from bench.training import OptimConfig, Trainer


def build(s: Session):
    """Everything validated and constructed before the first rollout."""
    cfg, device = s.cfg, s.device
    g = typed(GRPOConfig, cfg.grpo, "grpo")
    if (reason := g.validate()) is not None:
        raise BadInput(reason)
    isc = cfg.is_correction
    try:
        check_options(isc.mode, isc.cap, isc.lo, isc.hi, isc.veto, isc.get("lower_cap"))
    except ValueError as e:
        raise BadInput(f"is_correction: {e}") from None
    parallel = str(cfg.get("parallel", "ddp"))
    if (reason := distributed.check_parallel(parallel, cfg.trainer_precision.name, cfg.policy.get("action", "log"))):
        raise BadInput(reason)
    try:
        shards = resolve_shards(g.rollout_shards, s.dist.world, g.prompts_per_step, g.group_size, g.minibatches)
    except ValueError as e:
        raise BadInput(str(e)) from None
    if s.task.prompt_len == 0:
        raise BadInput(f"task={s.task.name} has no prompts or verifiable reward; valid for grpo: addition, reversal")
    torch.manual_seed(cfg.seed)
    model = Transformer(s.model_cfg).to(device)
    plan, engine = plan_precision(model, cfg.trainer_precision, device)  # validates before compute
    generator = Generator(s.model_cfg, cfg.generator_precision, device,
                          kv_cache_dtype=cfg.generator.kv_cache_dtype)
    policy = InstabilityPolicy(cfg.policy, emit=lambda ev: s.emit(ev))
    if cfg.init_from:
        load_policy_weights(model, cfg.init_from)
        s.warmstart = {"warmstart": str(cfg.init_from)}
    else:
        # Under torchrun rank 0 trains and caches the warm-up first; the others then load that
        # cache (the same weights, bitwise) instead of racing it to write the same file.
        if not s.dist.is_main:
            distributed.barrier(s.dist)
        s.warmstart = supervised_warmup(model, s.task, cfg.warmup.steps, cfg.warmup.batch_size, cfg.warmup.lr,
                                        cfg.warmup.seed, device, Path(cfg.warmup.cache_dir))
        if s.dist.is_main:
            distributed.barrier(s.dist)
    ref = copy.deepcopy(model).eval().requires_grad_(False) if g.kl_coef > 0 else None
    apply_precision(model, plan, engine)
    monitor = NumericsMonitor(model, plan, cfg.monitor.interval, cfg.monitor.shadow, cfg.monitor.per_module)
    # DDP wraps the update's forward; FSDP2 shards the model in place, before the optimizer exists.
    forward = distributed.wrap(model, s.dist, parallel)
    total_updates = cfg.steps * g.ppo_epochs * g.minibatches
    trainer = Trainer(model, typed(OptimConfig, cfg.optim, "optim"), total_updates, plan, engine, monitor, policy,
                      emit=lambda ev: s.emit(ev), device=device, loss_scale_cfg=cfg.trainer_precision.get("loss_scale"),
                      dist_info=s.dist)
    return g, shards, model, forward, ref, plan, generator, monitor, trainer


def rollout_shard(s: Session, g: GRPOConfig, step: int, shard: int, shards: int, model, ref, generator, trainer):
    """Sample one shard of the step's prompts (whole groups, its own seeded RNG stream) and compute
    everything the update needs from it, without gradients."""
    cfg, task, device, T = s.cfg, s.task, s.device, g.temperature
    per = g.prompts_per_step // shards
    problems = task.problems("train", g.prompts_per_step, cfg.seed * 1_000_003 + step)[shard * per:(shard + 1) * per]
    problems = [p for p in problems for _ in range(g.group_size)]  # prompt-major groups
    prompts = task.encode_prompts(problems).to(device)
    rng = torch.Generator(device=device).manual_seed(shard_seed(cfg.seed, step, shard))
    ro = generator.generate(prompts, max_new_tokens=g.max_new_tokens or task.seq_len - task.prompt_len,
                            temperature=T, top_k=g.top_k, top_p=g.top_p, eos_id=EOS, generator=rng,
                            use_kv_cache=bool(cfg.generator.get("use_kv_cache", True)))
    P = prompts.shape[1]
    rewards = torch.tensor([task.reward(p, task.completion_text(r)) for p, r in zip(problems, ro.tokens[:, P:])],
                           device=device)
    inputs, targets = ro.tokens[:, :-1], ro.tokens[:, 1:]
    with torch.no_grad(), trainer.context():
        logits = model(inputs)[:, P - 1:]
    with torch.no_grad():
        lp_ref = None if ref is None else token_logprobs(ref(inputs)[:, P - 1:], targets[:, P - 1:], T)
    return {"problems": problems, "tokens": ro.tokens, "inputs": inputs, "targets": targets,
            "mask": ro.response_mask, "lp_gen": ro.logprobs_untruncated,
            "lp_old": token_logprobs(logits, targets[:, P - 1:], T), "lp_ref": lp_ref, "rewards": rewards,
            "adv": group_advantages(rewards, g.group_size, g.std_scaling), "entropy": token_entropy(logits, T),
            "kv_saturation_frac": ro.kv_saturation_frac}


def rollout_step(s: Session, g: GRPOConfig, step: int, shards: int, model, ref, generator, trainer) -> dict:
    """This process's rollout shards (one per rank; all of them in one process), concatenated."""
    generator.refit(model)
    parts = [rollout_shard(s, g, step, j, shards, model, ref, generator, trainer) for j in local_shards(shards, s.dist)]
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k not in ("problems", "lp_ref", "kv_saturation_frac")}
    out["kv_saturation_frac"] = sum(p["kv_saturation_frac"] for p in parts) / len(parts)
    out["problems"] = [q for p in parts for q in p["problems"]]
    out["lp_ref"] = None if ref is None else torch.cat([p["lp_ref"] for p in parts])
    return out


def train(s: Session) -> int:
    cfg, device = s.cfg, s.device
    g, shards, model, forward, ref, plan, generator, monitor, trainer = build(s)
    isc = cfg.is_correction
    start, opt_step = 0, 0
    if s.resume_state is not None:  # sampling needs no RNG state: each shard's seed is (seed, step, shard)
        trainer.load_state_dict(s.resume_state["trainer"])
        opt_step = s.resume_state["opt_step"]
        start = s.restore_common(s.resume_state)
    s.open(cfg.steps, start)
    s.summary["engines"] = {"trainer": plan.engine, "generator": generator.engine_name}
    s.summary["warmstart"] = s.warmstart
    s.summary["parallel"] = ("fsdp" if distributed.is_sharded(model) else "ddp") if s.dist.enabled else "none"
    if s.dist.is_main:
        print_precision_state({"trainer": plan, "generator": generator.plan}, model, device)
    # Under FSDP every rank runs the eval (its forwards all-gather weights); rank 0 alone logs.
    evals_here = s.dist.is_main or distributed.is_sharded(model)
    if start == 0 and evals_here:
        s.log_eval(0, evaluate(model, s.task, trainer.context, device, cfg.eval_problems))

    status, step = "completed", start
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            loc = rollout_step(s, g, step, shards, model, ref, generator, trainer)
            P = loc["tokens"].shape[1] - loc["mask"].shape[1]
            # The global batch on every rank: mismatch, IS (batch_normalize) and rollout numbers
            # are statistics of the whole batch; then keep this rank's rows of the IS weights.
            lp_gen, lp_old, mask, rewards, adv, entropy = gather_rows(
                [loc[k] for k in ("lp_gen", "lp_old", "mask", "rewards", "adv", "entropy")], s.dist)
            mm = mismatch_metrics(lp_gen, lp_old, mask)
            w, is_metrics = importance_weights(lp_gen, lp_old, mask, mode=isc.mode, cap=isc.cap, lo=isc.lo,
                                               hi=isc.hi, veto=isc.veto, batch_normalize=isc.batch_normalize,
                                               lower_cap=isc.get("lower_cap"))
            w = distributed.shard(w, s.dist)
            if s.dist.is_main and mm["mismatch/token_mult_prob_error"] > cfg.mismatch_spike_threshold:
                png = plot_worst_sequence(lp_gen, lp_old, mask, s.run_dir / f"mismatch_step{step:05d}.png", step)
                s.event(step, "mismatch_spike", png.name, mm["mismatch/token_mult_prob_error"],
                        cfg.mismatch_spike_threshold, "log")
            # PPO epochs over minibatches; pi_old stays the pre-update recompute for the batch.
            # Minibatch i = the i-th slice of every shard: `rows` of this process, `grows` global.
            n_here = len(local_shards(shards, s.dist))
            per_shard = loc["mask"].shape[0] // n_here
            decision = None
            for epoch in range(g.ppo_epochs):
                for i in range(g.minibatches):
                    rows = minibatch_rows(i, g.minibatches, n_here, per_shard, device)
                    grows = minibatch_rows(i, g.minibatches, shards, per_shard, device)
                    if not adv[grows].any():  # global tensors: every rank decides alike (DDP needs that)
                        # Every group tied: no policy-gradient signal. Stepping anyway would
                        # still move the weights through Adam's momentum, so skip the update.
                        rl_metrics = {"rl/clip_frac": 0.0, "rl/kl_ref": 0.0}
                        train_metrics = {"train/loss": 0.0, "train/grad_norm": 0.0, "train/lr": trainer.lr()}
                        continue
                    t_up = time.perf_counter()
                    monitor.begin_step(opt_step)
                    with trainer.context():
                        logits = forward(loc["inputs"][rows])
                    lp_new = token_logprobs(logits[:, P - 1:], loc["targets"][rows, P - 1:], g.temperature)
                    m = loc["mask"][rows]
                    loss, rl_metrics = policy_loss(lp_new, loc["lp_old"][rows], loc["adv"][rows], m, w[rows], g,
                                                   None if loc["lp_ref"] is None else loc["lp_ref"][rows],
                                                   token_norm=token_norm(mask, grows, s.dist))
                    rl_metrics = token_weighted_mean(rl_metrics, int(m.sum()), s.dist, device)
                    trainer.backward(loss)
                    train_metrics, decision = trainer.step(opt_step, float(loss.detach()), int(m.sum()), t_up)
                    opt_step += 1
                    if decision.halt:
                        break
                if decision is not None and decision.halt:
                    break
            dt = train_metrics["train/step_time_s"] = time.perf_counter() - t0
            train_metrics["train/tokens_per_s"] = mask.shape[0] * loc["tokens"].shape[1] / dt  # all ranks' rows
            s.log_metrics(step, {**train_metrics, **rl_metrics, **mm, **is_metrics,
                                 "rl/entropy": float(masked_mean(entropy, mask.float())),
                                 "rollout/reward_mean": float(rewards.mean()),
                                 "rollout/reward_std": float(rewards.std()),
                                 "rollout/response_len_mean": float(mask.sum(1).float().mean()),
                                 **kv_metrics(generator, loc, s)})
            if decision is not None and decision.halt:
                status = "diverged"
                break
            if ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps) and evals_here:
                s.log_eval(step + 1, evaluate(model, s.task, trainer.context, device, cfg.eval_problems))
                if s.dist.is_main:
                    save_samples(s, step + 1, loc["problems"], loc["tokens"], rewards, P)  # rank 0's rows lead
            stop = s.should_stop(step + 1)
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or stop:
                s.save(step + 1, {"trainer": trainer.state_dict(), "opt_step": opt_step})
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


def kv_metrics(generator, loc: dict, s: Session) -> dict:
    """FP8 KV cache only: the fraction of K/V elements clipped on write (scales fixed at prefill)."""
    if not generator.kv_fp8:
        return {}
    return {"rollout/kv_saturation_frac": distributed.mean(loc["kv_saturation_frac"], s.dist)}


def save_samples(s: Session, step: int, problems, tokens, rewards, P: int, n: int = 4) -> None:
    """A few completions per eval step, for reading what the policy actually does."""
    from bench.rundir import JsonlWriter

    w = JsonlWriter(s.run_dir / "samples.jsonl")
    for i in range(min(n, len(problems))):
        w.write({"step": step, "prompt": problems[i].prompt, "answer": problems[i].answer,
                 "completion": s.task.completion_text(tokens[i, P:]), "reward": float(rewards[i])})
    w.close()


@hydra.main(config_path="../conf", config_name="grpo", version_base="1.3")
def main(cfg) -> None:
    multirun_dir(cfg)
    run_recipe(cfg, "grpo", train)


if __name__ == "__main__":
    check_overrides("grpo")
    main()
