"""GRPO with a separate generator engine: what the trainer/generator precision gap costs.

    python -m recipes.grpo model=tiny task=addition trainer_precision=bf16 \
        generator_precision=fp8_blockwise is_correction=tis steps=100 seed=0

Each step: refit the generator from the trainer's weights (its own copy, its own precision and
KV cache) -> sample G completions per prompt -> exact-match rewards -> group advantages ->
trainer recomputes the sampled tokens' log-probs (pi_old, trainer precision) -> mismatch metrics
(untruncated distributions) and IS weights (the truncated distribution actually sampled from,
bench/rl/truncation.py) -> PPO-clipped updates (bench/rl/update.py) -> log.

Scale-out (`torchrun --nproc_per_node=N -m recipes.grpo ...`): rank r samples the r-th contiguous
slice of the step's prompts (whole groups), all ranks gather the per-row tensors so mismatch, IS
and rollout numbers are those of the global batch, and DDP averages the update's gradients.
`grpo.rollout_shards=N` in one process samples the same N shards in a loop and reproduces the
N-process run's tokens exactly (bench/rl/rollout_shards.py).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch

from bench.train import distributed
from bench.generation.attribution import attribute_step
from bench.train.eval import evaluate
from bench.core.events import Event
from bench.generation import Generator, build_generator, close_generator
from bench.generation.perturb import Perturbation
from bench.models.decoder import Transformer, token_logprobs
from bench.models import build_model
from bench.numerics.drift import DriftWatch
from bench.numerics.monitor import NumericsMonitor
from bench.precision.plan import apply_precision, plan_precision
from bench.run.entrypoint import check_overrides, print_precision_state
from bench.rl.batch import RolloutBatch, Scored
from bench.rl.grpo import GRPOConfig, group_advantages, masked_mean, token_entropy
from bench.rl.importance import importance_weights
from bench.rl.mismatch import mismatch_metrics
from bench.rl.plots import plot_worst_sequence
from bench.rl.rollout_shards import local_shards, resolve_shards, shard_seed
from bench.rl.truncation import kept_logprobs
from bench.rl.update import ppo_update
from bench.rl.warmstart import load_policy_weights, supervised_warmup
from bench.run.session import Session, multirun_dir, run_recipe, typed
from bench.train.trainer import OptimConfig, Trainer


@dataclass
class Parts:
    """Everything the loop uses, validated and built before the first rollout."""
    g: GRPOConfig
    shards: int
    model: Transformer
    forward: torch.nn.Module     # the model, or its DDP wrapper
    ref: Transformer | None      # frozen reference policy (kl_coef > 0), in the trainer's precision
    generator: Generator
    monitor: NumericsMonitor
    trainer: Trainer
    plan: object
    perturb: Perturbation        # generator.perturb (SYNTHETIC fault injection; off by default)


def build(s: Session) -> Parts:
    cfg, device = s.cfg, s.device
    # Every value below was checked by the session's one validation pass (bench/config/validate.py).
    g = typed(GRPOConfig, cfg.grpo, "grpo")
    shards = resolve_shards(g.rollout_shards, s.dist.world, g.prompts_per_step, g.group_size, g.minibatches)
    torch.manual_seed(cfg.seed)
    model = build_model(s.model_cfg, device)
    model.lm_head_fp32 = cfg.lm_head_fp32  # both sides (DESIGN §11); the generator gets it below
    plan, engine = plan_precision(model, cfg.trainer_precision, device)  # validates before compute
    generator = build_generator(cfg, s.model_cfg, device)  # generator.backend: native | vllm (DESIGN §13)
    # The policy loss is ~0 by construction and the grad norm heavy-tailed: no one-step spike
    # detector; watch the trends that mean something in RL (bench/numerics/policy.py).
    perturb = Perturbation(typed_perturb(cfg))  # SYNTHETIC: off unless generator.perturb.sigma > 0
    perturb.install(generator)
    policy = s.instability_policy(signals=("grad_norm", "reward", "entropy"), spikes=())
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
    apply_precision(model, plan, engine)
    # The reference is the starting policy *in the trainer's precision* (a copy of the swapped
    # model, run under the same autocast): KL to it is 0 before the first update, and kl_coef
    # pulls towards the start, not towards fp32 numerics. Copied before any hook or sharding.
    ref = copy.deepcopy(model).eval().requires_grad_(False) if g.kl_coef > 0 else None
    monitor = NumericsMonitor(model, plan, cfg.monitor.interval, cfg.monitor.shadow, cfg.monitor.per_module)
    # DDP wraps the update's forward; FSDP2 shards the model in place, before the optimizer exists.
    forward = distributed.wrap(model, s.dist, cfg.parallel)
    total_updates = cfg.steps * g.ppo_epochs * g.minibatches
    trainer = Trainer(model, typed(OptimConfig, cfg.optim, "optim"), total_updates, plan, engine, monitor, policy,
                      emit=s.emit, device=device, loss_scale_cfg=cfg.trainer_precision.get("loss_scale"),
                      dist_info=s.dist)
    return Parts(g, shards, model, forward, ref, generator, monitor, trainer, plan, perturb)


def rollout_shard(s: Session, p: Parts, step: int, shard: int) -> RolloutBatch:
    """Sample one shard of the step's prompts (whole groups, its own seeded RNG stream) and score
    it without gradients: rewards, advantages, the trainer's log-probs (untruncated, and over the
    generator's kept set for IS), the reference's, entropy."""
    cfg, task, device, g = s.cfg, s.task, s.device, p.g
    per = g.prompts_per_step // p.shards
    problems = task.problems("train", g.prompts_per_step, cfg.seed * 1_000_003 + step)[shard * per:(shard + 1) * per]
    problems = [q for q in problems for _ in range(g.group_size)]  # prompt-major groups
    prompts = task.encode_prompts(problems).to(device)
    rng = torch.Generator(device=device).manual_seed(shard_seed(cfg.seed, step, shard))
    with s.phase("rollout_decode"):  # the generator times its prefill inside (nested: subtracted)
        ro = p.generator.generate(prompts, max_new_tokens=g.max_new_tokens or task.seq_len - task.prompt_len,
                                  temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, eos_id=task.eos_id,
                                  generator=rng, use_kv_cache=cfg.generator.use_kv_cache)
    with s.phase("score"):
        return score_shard(s, p, problems, prompts, ro)


def score_shard(s: Session, p: Parts, problems: list, prompts: torch.Tensor, ro) -> RolloutBatch:
    """Rewards, group advantages and the trainer's (and reference's) no-grad log-probs of a rollout."""
    task, device, g = s.task, s.device, p.g
    P, T = prompts.shape[1], g.temperature
    rewards = torch.tensor([task.reward(q, task.completion_text(r)) for q, r in zip(problems, ro.tokens[:, P:])],
                           device=device)
    inputs, targets = ro.tokens[:, :-1], ro.tokens[:, P:]
    with torch.no_grad(), p.trainer.context():
        logits = p.model(inputs)[:, P - 1:]
        ref_logits = None if p.ref is None else p.ref(inputs)[:, P - 1:]
    lp_old = token_logprobs(logits, targets, T)
    lp_ref = None if ref_logits is None else token_logprobs(ref_logits, targets, T)
    lp_old_kept, lp_behav = lp_old, ro.logprobs_untruncated
    if ro.kept_mask is not None:  # top-k/top-p: IS compares the two sides over the generator's kept set
        lp_old_kept, lp_behav = kept_logprobs(logits, targets, ro.kept_mask, T), ro.logprobs
    scored = Scored(ro.logprobs_untruncated, lp_behav, lp_old, lp_old_kept, ro.response_mask, rewards,
                    group_advantages(rewards, g.group_size, g.std_scaling), token_entropy(logits, T))
    return RolloutBatch(problems, ro.tokens, scored, lp_ref, ro.kv_saturation_frac, P)


def train(s: Session) -> int:
    cfg, device = s.cfg, s.device
    p = build(s)
    g, isc, model, trainer = p.g, cfg.is_correction, p.model, p.trainer
    start, opt_step = 0, 0
    pc = cfg.policy
    drift = DriftWatch(pc.drift_window, pc.drift_growth, pc.drift_floor_tmpe, pc.drift_floor_k3)
    if s.resume_state is not None:
        if "drift" in s.resume_state:
            drift.load_state_dict(s.resume_state["drift"])  # sampling needs no RNG state: each shard's seed is (seed, step, shard)
        trainer.load_state_dict(s.resume_state["trainer"])
        opt_step = s.resume_state["opt_step"]
        start = s.restore_common(s.resume_state)
    s.open(cfg.steps, start, model)
    s.summary["engines"] = {"trainer": p.plan.engine, "generator": p.generator.engine_name}
    s.plans = {"trainer": p.plan, "generator": p.generator.plan}  # summary.json: modules, fallbacks
    s.summary["warmstart"] = s.warmstart
    if p.perturb.cfg.on:  # named as synthetic wherever it appears (bench/generation/perturb.py)
        s.summary["synthetic"] = p.perturb.summary()
    if s.dist.is_main:
        print_precision_state({"trainer": p.plan, "generator": p.generator.plan}, model, device)
    batch = None

    def run_eval(steps_done: int) -> dict:
        values = evaluate(model, s.task, trainer.context, device, cfg.eval_problems, cfg.eval_kv_cache)
        if s.dist.is_main and batch is not None:  # rank 0's rows lead
            save_samples(s, steps_done, batch)
        return values

    def state() -> dict:
        return {"trainer": trainer.state_dict(), "opt_step": opt_step, "drift": drift.state_dict()}

    with s.running(p.monitor.close, lambda: close_generator(p.generator, s.summary)):
        if start == 0:  # the warm-started policy: the start every later eval is compared with
            s.run_eval(0, run_eval)
        for step in range(start, cfg.steps):
            s.begin_step(step)  # time/<phase>_s of this step, eval and checkpoint included (bench/perf/timing.py)
            with s.phase("refit"):
                p.generator.refit(model)
            batch = RolloutBatch.cat([rollout_shard(s, p, step, j) for j in local_shards(p.shards, s.dist)])
            with s.phase("monitor"):  # attribution is measurement: its cost is the monitor's
                attrib = attribution(s, p, step, batch)  # before the update moves the trainer's weights
            with s.phase("score"):
                # The global batch on every rank: mismatch, IS (batch_normalize) and rollout numbers
                # are statistics of the whole batch; then keep this rank's rows of the IS weights.
                glob = batch.scored.gathered(s.dist)
                mm = mismatch_metrics(glob.lp_gen, glob.lp_old, glob.mask)
                w, is_metrics = importance_weights(glob.lp_behav, glob.lp_old_kept, glob.mask, mode=isc.mode,
                                                   cap=isc.cap, lo=isc.lo, hi=isc.hi, veto=isc.veto,
                                                   batch_normalize=isc.batch_normalize, lower_cap=isc.lower_cap)
            with s.phase("monitor"):
                if s.dist.is_main and mm["mismatch/token_mult_prob_error"] > cfg.mismatch_spike_threshold:
                    png = plot_worst_sequence(glob.lp_gen, glob.lp_old, glob.mask,
                                              s.run_dir / f"mismatch_step{step:05d}.png", step)
                    s.emit(Event(step, "mismatch_spike", png.name, mm["mismatch/token_mult_prob_error"],
                                 cfg.mismatch_spike_threshold, stat="token_mult_prob_error"))
            with s.phase("update"):
                up = ppo_update(batch, glob, distributed.shard(w, s.dist), g, p.forward, trainer, p.monitor, step,
                                opt_step, p.shards, s.dist, tag_opt_step=lambda n: setattr(s, "opt_step", n))
            opt_step = up.opt_step
            with s.phase("monitor"):
                metrics = {**up.metrics, **attrib, **mm, **is_metrics, **rollout_metrics(glob),
                           **kv_metrics(p.generator, batch, s)}
                metrics.update(drift_metrics(s, drift, step, mm))
                metrics.update(p.perturb.metrics())
            # tokens: this rank's rows (its device's joules); tokens/s counts all ranks' rows, as before
            if not s.end_step(step, metrics, up.halt, run_eval, state, tokens=batch.tokens.numel(),
                              counted_tokens=glob.mask.shape[0] * batch.tokens.shape[1]):
                break
    return s.finish()


def attribution(s: Session, p: Parts, step: int, batch: RolloutBatch) -> dict:
    """attribution.interval: trainer vs generator hidden states on the first shard's rollouts
    (rank 0), with the weights both sides had when the rollouts were sampled and scored, i.e.
    before the update. Its cost is inside train/step_time_s."""
    a = s.cfg.attribution
    if not a.interval or step % a.interval or not s.dist.is_main:
        return {}
    rows = batch.tokens.shape[0] // len(local_shards(p.shards, s.dist))
    return attribute_step(s.run_dir, step, p.model, p.trainer.context, p.generator, batch.tokens,
                          batch.scored.mask, batch.prompt_len, rows, s.cfg.generator.use_kv_cache,
                          p.g.temperature, a.threshold)


def typed_perturb(cfg):
    from bench.generation.perturb import PerturbConfig

    pc = cfg.generator.perturb
    return PerturbConfig(float(pc.sigma), str(pc.target), int(pc.seed))


def drift_metrics(s: Session, drift: DriftWatch, step: int, mm: dict) -> dict:
    """mismatch/<name>_growth and a mismatch_drift event at its first crossing (bench/numerics/drift.py)."""
    out, crossed = drift.update(mm)
    for m, g, last, floor in crossed:
        s.emit(Event(step, "mismatch_drift", f"mismatch/{m}", g, s.cfg.policy.drift_growth, stat="growth"))
    return out


def rollout_metrics(glob: Scored) -> dict:
    return {"rl/entropy": float(masked_mean(glob.entropy, glob.mask.float())),
            "rollout/reward_mean": float(glob.rewards.mean()), "rollout/reward_std": float(glob.rewards.std()),
            "rollout/response_len_mean": float(glob.mask.sum(1).float().mean())}


def kv_metrics(generator, batch: RolloutBatch, s: Session) -> dict:
    """FP8 KV cache only: the fraction of K/V elements clipped on write (scales fixed at prefill)."""
    if not generator.kv_fp8:
        return {}
    return {"rollout/kv_saturation_frac": distributed.mean(batch.kv_saturation_frac, s.dist)}


def save_samples(s: Session, step: int, batch: RolloutBatch, n: int = 4) -> None:
    """A few completions per eval step, for reading what the policy actually does."""
    from bench.core.jsonl import JsonlWriter

    w = JsonlWriter(s.run_dir / "samples.jsonl")
    P = batch.prompt_len
    for i in range(min(n, len(batch.problems))):
        q = batch.problems[i]
        w.write({"step": step, "prompt": q.prompt, "answer": q.answer,
                 "completion": s.task.completion_text(batch.tokens[i, P:]), "reward": float(batch.scored.rewards[i])})
    w.close()


@hydra.main(config_path="../conf", config_name="grpo", version_base="1.3")
def main(cfg) -> None:
    multirun_dir(cfg)
    run_recipe(cfg, "grpo", train)


if __name__ == "__main__":
    check_overrides("grpo")
    main()
