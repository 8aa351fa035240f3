"""Per-group checks of the validation pass (bench/config/validate.py): ranges and choices, and the
cross-field checks against the model (built on the meta device by the caller).

Where a component already owns a rule, this calls that component's public function instead of
restating the rule: `plan_precision` (recipe knobs, engine availability, FP8 shapes),
`importance.check_options` (IS options), `GRPOConfig.validate`, `resolve_shards`,
`policy.ACTIONS`, `recipes.get_recipe` (shadow recipe names).
"""
from __future__ import annotations

import torch.nn as nn
from omegaconf import OmegaConf

from bench.config.checks import finite, fnmatch_any, need, one_of, positive
from bench.core.errors import BadInput
from bench.generation.generator import LOGPROBS_MODES

WANDB_MODES = ("auto", "online", "offline", "disabled")
KV_CACHE_DTYPES = ("auto", "fp8")
GRPO_RULES = ("grpo.loss_agg token_mean | seq_mean_token_mean, positive counts, grpo.minibatches dividing "
              "group_size*prompts_per_step, grpo.temperature > 0")
IS_RULES = "is_correction.cap > 0, 0 <= lo <= hi, veto >= 0 or null, lower_cap (tis only) in 0..cap or null"


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def check_precision(node, side: str, meta: nn.Module, device) -> None:
    """A precision side: a known name; fp16's loss scale; an FP8 recipe's kept modules, knobs,
    engine on this device and every FP8 Linear's shape (through `plan_precision`)."""
    from bench.precision.plan import plan_precision
    from bench.precision.mixed import HIGH_PRECISION
    from bench.precision.recipes import RECIPES

    one_of(node.name, f"{side}.name", (*HIGH_PRECISION, *RECIPES))
    if node.name == "fp16":
        positive(node.loss_scale, f"{side}.loss_scale.", "init_scale", "growth_interval")
    if node.name in HIGH_PRECISION:
        return
    check_keep(node.keep_high_precision, f"{side}.keep_high_precision", meta)
    try:  # the generator side plans as the generator (its engines, weights_only), not as a trainer
        plan_precision(meta, node, device, side="generator" if side == "generator_precision" else "trainer")
    except BadInput as e:
        raise BadInput(str(e) if side == "precision" else f"{side}: {e}") from None


def check_keep(keep, prefix: str, meta: nn.Module) -> None:
    """Staged rollout: a pattern that matches no Linear is a typo that silently keeps nothing."""
    names, n_layers = linear_names(meta), len(meta.layers)
    for p in keep.patterns:
        need(fnmatch_any(p, names), f"{prefix}.patterns entry {p!r} matches no Linear of this model; "
                                    f"valid: fnmatch patterns over {', '.join(names[:7])}, ..., lm_head")
    for k in ("first_n_layers", "last_n_layers"):
        need(0 <= keep[k] <= n_layers, f"{prefix}.{k}={keep[k]}; valid: 0..{n_layers} (model.n_layers)")


def check_optim(o) -> None:
    need(finite(o.lr) and o.lr > 0, f"optim.lr={o.lr} must be a positive finite number; valid: > 0, e.g. 3e-4")
    need(0 <= o.min_lr_ratio <= 1, f"optim.min_lr_ratio={o.min_lr_ratio}; valid: 0..1")
    need(o.warmup_steps >= 0, f"optim.warmup_steps={o.warmup_steps} must be >= 0; valid: >= 0")
    need(o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay} must be >= 0; valid: >= 0")
    for k in ("beta1", "beta2"):
        need(0 <= o[k] < 1, f"optim.{k}={o[k]}; valid: 0 <= {k} < 1")
    positive(o, "optim.", "eps", "grad_clip")


def check_logger(lg) -> None:
    positive(lg, "logger.", "console_every", "events_every")
    one_of(lg.wandb.mode, "logger.wandb.mode", WANDB_MODES)


def check_monitor(m) -> None:
    from bench.precision.recipes import RECIPES

    need(m.interval >= 0, f"monitor.interval={m.interval}; valid: 0 (off) or a step interval >= 1")
    for name in m.shadow:
        need(name in RECIPES, f"monitor.shadow entry {name!r} is not an FP8 recipe; valid: {', '.join(RECIPES)}")


def check_policy(p) -> None:
    """The policy's own rule (PolicyConfig.validate) is the one list of its ranges."""
    from omegaconf import OmegaConf

    reason = OmegaConf.to_object(p).validate()
    need(reason is None, reason or "")


def check_stress(s, meta: nn.Module) -> None:
    """The injected outlier must land on a Linear of this model, in one of its input channels."""
    if not s.enabled:
        return
    names = linear_names(meta)
    need(s.module in names, f"stress.module={s.module!r} is not a Linear of this model; valid: {', '.join(names)}")
    width = meta.get_submodule(s.module).in_features
    need(0 <= s.channel < width, f"stress.channel={s.channel}; valid: 0..{width - 1} ({s.module} input features)")
    need(s.from_step >= 0, f"stress.from_step={s.from_step} must be >= 0; valid: >= 0")
    need(finite(s.magnitude) and s.magnitude > 0, f"stress.magnitude={s.magnitude} must be a positive finite factor; valid: > 0")
    need(finite(s.growth) and s.growth > 0, f"stress.growth={s.growth} must be a positive finite factor; valid: > 0 (1 = constant)")


def check_grpo(cfg, task, model_cfg, world: int, meta: nn.Module) -> None:
    """GRPO knobs, IS options, the rollout sharding, the warm-up and its source."""
    from bench.rl.importance import check_options
    from bench.rl.rollout_shards import resolve_shards

    g = OmegaConf.to_object(cfg.grpo) if OmegaConf.is_config(cfg.grpo) else cfg.grpo
    if (reason := g.validate()) is not None:
        raise BadInput(reason if "valid:" in reason else f"{reason}; valid: {GRPO_RULES}")
    # One sample per prompt: its group mean is itself, so every advantage is 0 and no step learns.
    need(g.group_size >= 2, f"grpo.group_size={g.group_size} gives zero advantage (and gradient) every step; "
                            f"valid: >= 2")
    need(0 < g.top_p <= 1, f"grpo.top_p={g.top_p}; valid: 0 < top_p <= 1 (1 = off)")
    need(g.top_k >= 0, f"grpo.top_k={g.top_k}; valid: 0 (off) or a token count")
    need(0 <= g.eps_low < 1 and g.eps_high >= 0, f"grpo.eps_low={g.eps_low}, eps_high={g.eps_high}; "
                                                 f"valid: 0 <= eps_low < 1, eps_high >= 0")
    need(g.kl_coef >= 0, f"grpo.kl_coef={g.kl_coef} must be >= 0; valid: >= 0")
    need(g.max_new_tokens >= 0, f"grpo.max_new_tokens={g.max_new_tokens}; valid: 0 (the task's answer) or >= 1")
    room = model_cfg.max_seq_len - task.prompt_len + 1
    need(g.max_new_tokens <= room, f"grpo.max_new_tokens={g.max_new_tokens} overflows model.max_seq_len="
                                   f"{model_cfg.max_seq_len} after a {task.prompt_len}-token prompt; valid: 0..{room}")
    try:
        resolve_shards(g.rollout_shards, world, g.prompts_per_step, g.group_size, g.minibatches)
    except ValueError as e:
        raise BadInput(str(e)) from None
    isc = cfg.is_correction
    try:
        check_options(isc.mode, isc.cap, isc.lo, isc.hi, isc.veto, isc.lower_cap)
    except ValueError as e:
        msg = str(e) if "valid:" in str(e) else f"{e}; valid: {IS_RULES}"
        raise BadInput(msg) from None
    check_warmup(cfg, meta)


def check_warmup(cfg, meta: nn.Module) -> None:
    """The supervised warm-up's knobs, or the checkpoint that replaces it: it must exist, pass its
    checksum and fit this model, which `load_policy_weights` checks; loading into the meta model
    copies nothing (torch warns that such a copy is a no-op, which is the point here)."""
    w = cfg.warmup
    need(w.steps >= 0, f"warmup.steps={w.steps}; valid: 0 (none) or a step count")
    positive(w, "warmup.", "batch_size", "lr")
    if cfg.init_from is None:
        return
    import warnings
    from pathlib import Path

    from bench.rl.warmstart import load_policy_weights

    need(Path(cfg.init_from).exists(), f"init_from={cfg.init_from} does not exist; valid: a pretrain run dir, "
                                       f"a checkpoint file, or null (the cached warm-up)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_policy_weights(meta, cfg.init_from)


def check_generator(cfg) -> None:
    """The generator's cache, kernels (DESIGN §11) and the in-run attribution that compares them."""
    from bench.generation.kernels import kernel_config

    gen = cfg.generator
    one_of(gen.kv_cache_dtype, "generator.kv_cache_dtype", KV_CACHE_DTYPES)
    one_of(gen.logprobs_mode, "generator.logprobs_mode", LOGPROBS_MODES)
    need(gen.kv_cache_headroom >= 1.0, f"generator.kv_cache_headroom={gen.kv_cache_headroom}; valid: a number >= 1 "
                                       f"(the prefill's amax maps to 448 / headroom)")
    kernel_config(gen.kernels).check()
    check_backend(cfg)
    a = cfg.attribution
    need(a.interval >= 0, f"attribution.interval={a.interval}; valid: an integer >= 0 (0 = off)")
    need(a.threshold >= 0, f"attribution.threshold={a.threshold}; valid: a number >= 0")


def check_backend(cfg) -> None:
    """generator.backend: a known one; vllm's own rules (bench/generation/vllm_backend.py check_vllm)."""
    import torch

    from bench.generation.backend import BACKENDS, backend_of

    one_of(backend_of(cfg.generator), "generator.backend", BACKENDS)
    if backend_of(cfg.generator) == "vllm":
        from bench.generation.vllm_backend import check_vllm

        check_vllm(cfg, on_cpu=cfg.device == "cpu" or not torch.cuda.is_available())


def check_model(model_cfg):
    """The model group: a known kind; model=hf's path or arch (its sizes filled from a checkpoint's
    config.json); the dims. Returns the resolved config (bench.models.resolve)."""
    from bench.models import KINDS, resolve

    one_of(model_cfg.kind, "model.kind", KINDS)
    if model_cfg.kind == "builtin":
        for key in ("path", "arch"):
            need(getattr(model_cfg, key) is None, f"model.{key}={getattr(model_cfg, key)!r} is a model=hf key; "
                                                  f"valid: model=hf (model.kind=hf), or leave it unset")
    model_cfg = resolve(model_cfg)  # BadInput for a missing/invalid path or arch
    need((reason := model_cfg.validate()) is None, str(reason))
    kv = model_cfg.n_kv_heads or model_cfg.n_heads
    need(kv > 0 and model_cfg.n_heads % kv == 0, f"model.n_kv_heads={model_cfg.n_kv_heads} must divide "
                                                 f"model.n_heads={model_cfg.n_heads}; valid: 0 (= n_heads) or a divisor")
    return model_cfg


def check_perturb(cfg) -> None:
    """generator.perturb: the SYNTHETIC fault injection (bench/generation/perturb.py)."""
    from bench.generation.perturb import PerturbConfig

    pc = cfg.generator.perturb
    reason = PerturbConfig(float(pc.sigma), str(pc.target), int(pc.seed)).validate()
    need(reason is None, reason or "")
