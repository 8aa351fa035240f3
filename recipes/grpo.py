"""GRPO with a separate generator engine: what the trainer/generator precision gap costs.

    python -m recipes.grpo model=tiny task=addition trainer_precision=bf16 \
        generator_precision=fp8_blockwise is_correction=tis steps=100 seed=0

Each step: refit the generator from the trainer's weights (its own copy, its own precision and
KV cache) -> sample G completions per prompt -> exact-match rewards -> group advantages ->
trainer recomputes the sampled tokens' log-probs (pi_old, trainer precision) -> mismatch metrics
and IS weights from (generator, trainer) log-probs -> PPO-clipped updates -> log.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import hydra
import torch

from bench.errors import BadInput
from bench.eval import evaluate
from bench.generation import Generator
from bench.model import Transformer, token_logprobs
from bench.numerics.monitor import NumericsMonitor
from bench.numerics.policy import InstabilityPolicy
from bench.precision.engines import apply_precision, plan_precision
from bench.recipe_utils import check_overrides, print_precision_state
from bench.rl.grpo import GRPOConfig, entropy_from_logits, group_advantages, policy_loss
from bench.rl.importance import check_options, importance_weights
from bench.rl.mismatch import mismatch_metrics
from bench.rl.plots import plot_worst_sequence
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
        s.warmstart = supervised_warmup(model, s.task, cfg.warmup.steps, cfg.warmup.batch_size, cfg.warmup.lr,
                                        cfg.warmup.seed, device, Path(cfg.warmup.cache_dir))
    ref = copy.deepcopy(model).eval().requires_grad_(False) if g.kl_coef > 0 else None
    apply_precision(model, plan, engine)
    monitor = NumericsMonitor(model, plan, cfg.monitor.interval, cfg.monitor.shadow, cfg.monitor.per_module)
    total_updates = cfg.steps * g.ppo_epochs * g.minibatches
    trainer = Trainer(model, typed(OptimConfig, cfg.optim, "optim"), total_updates, plan, engine, monitor, policy,
                      emit=lambda ev: s.emit(ev), device=device, loss_scale_cfg=cfg.trainer_precision.get("loss_scale"))
    return g, model, ref, plan, generator, monitor, trainer


def rollout_step(s: Session, g: GRPOConfig, step: int, model, generator, trainer, rng: torch.Generator):
    """Sample, score, and compute everything the update needs (no gradients)."""
    cfg, task, device = s.cfg, s.task, s.device
    problems = task.problems("train", g.prompts_per_step, cfg.seed * 1_000_003 + step)
    problems = [p for p in problems for _ in range(g.group_size)]  # prompt-major groups
    prompts = task.encode_prompts(problems).to(device)
    max_new = g.max_new_tokens or task.seq_len - task.prompt_len
    generator.refit(model)
    ro = generator.generate(prompts, max_new_tokens=max_new, temperature=g.temperature, top_k=g.top_k,
                            top_p=g.top_p, eos_id=EOS, generator=rng,
                            use_kv_cache=bool(cfg.generator.get("use_kv_cache", True)))
    P = prompts.shape[1]
    responses = ro.tokens[:, P:]
    rewards = torch.tensor([task.reward(p, task.completion_text(r)) for p, r in zip(problems, responses)], device=device)
    adv = group_advantages(rewards, g.group_size, g.std_scaling)
    inputs, targets = ro.tokens[:, :-1], ro.tokens[:, 1:]
    mask = ro.response_mask
    with torch.no_grad(), trainer.context():
        logits = model(inputs)
    lp_old = token_logprobs(logits[:, P - 1:], targets[:, P - 1:], g.temperature)
    return problems, ro, rewards, adv, inputs, targets, mask, lp_old, entropy_from_logits(logits[:, P - 1:], mask, g.temperature)


def train(s: Session) -> int:
    cfg, device = s.cfg, s.device
    g, model, ref, plan, generator, monitor, trainer = build(s)
    isc = cfg.is_correction
    rng = torch.Generator(device=device).manual_seed(cfg.seed)
    start, opt_step = 0, 0
    if s.resume_state is not None:
        trainer.load_state_dict(s.resume_state["trainer"])
        rng.set_state(s.resume_state["sampler_rng"])
        opt_step = s.resume_state["opt_step"]
        start = s.restore_common(s.resume_state)
    s.open(cfg.steps, start)
    s.summary["engines"] = {"trainer": plan.engine, "generator": generator.engine_name}
    s.summary["warmstart"] = s.warmstart
    print_precision_state({"trainer": plan, "generator": generator.plan}, model, device)
    if start == 0:
        s.log_eval(0, evaluate(model, s.task, trainer.context, device, cfg.eval_problems))

    status, step = "completed", start
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            problems, ro, rewards, adv, inputs, targets, mask, lp_old, entropy = rollout_step(
                s, g, step, model, generator, trainer, rng)
            P = ro.tokens.shape[1] - mask.shape[1]
            lp_gen = ro.logprobs_untruncated
            mm = mismatch_metrics(lp_gen, lp_old, mask)
            w, is_metrics = importance_weights(lp_gen, lp_old, mask, mode=isc.mode, cap=isc.cap, lo=isc.lo,
                                               hi=isc.hi, veto=isc.veto, batch_normalize=isc.batch_normalize,
                                               lower_cap=isc.get("lower_cap"))
            if mm["mismatch/token_mult_prob_error"] > cfg.mismatch_spike_threshold:
                png = plot_worst_sequence(lp_gen, lp_old, mask, s.run_dir / f"mismatch_step{step:05d}.png", step)
                s.event(step, "mismatch_spike", png.name, mm["mismatch/token_mult_prob_error"],
                        cfg.mismatch_spike_threshold, "log")
            lp_ref = None
            if ref is not None:
                with torch.no_grad():
                    lp_ref = token_logprobs(ref(inputs)[:, P - 1:], targets[:, P - 1:], g.temperature)
            # PPO epochs over minibatches; pi_old stays the pre-update recompute for the batch.
            B, mb = len(problems), len(problems) // g.minibatches
            decision = None
            for epoch in range(g.ppo_epochs):
                for i in range(0, B, mb):
                    sl = slice(i, i + mb)
                    if not adv[sl].any():
                        # Every group tied: no policy-gradient signal. Stepping anyway would
                        # still move the weights through Adam's momentum, so skip the update.
                        rl_metrics = {"rl/clip_frac": 0.0, "rl/kl_ref": 0.0}
                        train_metrics = {"train/loss": 0.0, "train/grad_norm": 0.0, "train/lr": trainer.lr()}
                        continue
                    t_up = time.perf_counter()
                    monitor.begin_step(opt_step)
                    with trainer.context():
                        logits = model(inputs[sl])
                    lp_new = token_logprobs(logits[:, P - 1:], targets[sl, P - 1:], g.temperature)
                    loss, rl_metrics = policy_loss(lp_new, lp_old[sl], adv[sl], mask[sl], w[sl], g,
                                                   None if lp_ref is None else lp_ref[sl])
                    trainer.backward(loss)
                    train_metrics, decision = trainer.step(opt_step, float(loss.detach()), int(mask[sl].sum()), t_up)
                    opt_step += 1
                    if decision.halt:
                        break
                if decision is not None and decision.halt:
                    break
            train_metrics["train/step_time_s"] = time.perf_counter() - t0
            train_metrics["train/tokens_per_s"] = int(ro.tokens.numel()) / train_metrics["train/step_time_s"]
            s.log_metrics(step, {**train_metrics, **rl_metrics, **mm, **is_metrics, "rl/entropy": entropy,
                                 "rollout/reward_mean": float(rewards.mean()), "rollout/reward_std": float(rewards.std()),
                                 "rollout/response_len_mean": float(mask.sum(1).float().mean())})
            if decision is not None and decision.halt:
                status = "diverged"
                break
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                s.log_eval(step + 1, evaluate(model, s.task, trainer.context, device, cfg.eval_problems))
                save_samples(s, step + 1, problems, ro, rewards, P)
            stop = s.should_stop(step + 1)
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or stop:
                s.save(step + 1, {"trainer": trainer.state_dict(), "sampler_rng": rng.get_state(), "opt_step": opt_step})
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


def save_samples(s: Session, step: int, problems, ro, rewards, P: int, n: int = 4) -> None:
    """A few completions per eval step, for reading what the policy actually does."""
    from bench.rundir import JsonlWriter

    w = JsonlWriter(s.run_dir / "samples.jsonl")
    for i in range(min(n, len(problems))):
        w.write({"step": step, "prompt": problems[i].prompt, "answer": problems[i].answer,
                 "completion": s.task.completion_text(ro.tokens[i, P:]), "reward": float(rewards[i])})
    w.close()


@hydra.main(config_path="../conf", config_name="grpo", version_base="1.3")
def main(cfg) -> None:
    multirun_dir(cfg)
    run_recipe(cfg, "grpo", train)


if __name__ == "__main__":
    check_overrides("grpo")
    main()
