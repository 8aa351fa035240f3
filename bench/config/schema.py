"""Typed schemas of every config group: the one place each default lives.

Each group is a dataclass registered in Hydra's ConfigStore. The group's YAML files select a
choice (a model's dims, a task's kind, a precision's recipe) and either are merged into a typed
field of the recipe schema (model, optim, logger, monitor, policy, stress, is_correction, grpo,
generator, warmup) or name their kind's schema first in their defaults list (task and precision
come in kinds with different keys: `/schema/task/addition@_here_`, `/schema/precision/fp8@_here_`).
Either way a composed config holds every key with its default, with its type, in struct mode: a key
no schema declares is an error at composition, not a silently ignored value.

What a schema cannot say (ranges, choices, cross-field and device checks) is the validation pass
in bench/config/validate.py. Existing dataclasses are reused, not copied: ModelConfig
(bench/models/decoder.py), OptimConfig (bench/train/trainer.py), GRPOConfig (bench/rl/grpo.py), and each task's
`Config` (bench/tasks/).

Importing this module registers the schemas; bench.config imports it, and so does everything
that composes a config (the recipes through bench.run.session, check_overrides, the tests).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from bench.generation.perturb import PerturbConfig  # generator.perturb: SYNTHETIC fault injection
from bench.generation.backend import DEFAULT_BACKEND
from bench.generation.kernels import KernelConfig  # generator/kernels: the schema lives with the kernels
from bench.generation.generator import LOGPROBS_MODES
from bench.models.decoder import ModelConfig as BuiltinModelConfig
from bench.numerics.policy import PolicyConfig  # the policy group's schema lives with the policy
from bench.precision.plan import PLAN_DEFAULTS as _PLAN  # planning keys' defaults (one place)
from bench.precision.recipes import ScalingRecipe
from bench.rl.grpo import GRPOConfig
from bench.tasks import TASKS
from bench.perf.timing import TimingConfig  # timing group: sync_interval, energy (bench/perf/timing.py)
from bench.train.trainer import OptimConfig


# --- task: one schema per kind, each defined next to its task ----------------------------------
TASK_SCHEMAS = {name: cls.Config for name, cls in TASKS.items()}


# --- precision: high-precision kinds and FP8 recipes -----------------------------------------
@dataclass
class LossScale:
    """fp16 dynamic loss scaling (torch.amp.GradScaler's init_scale and growth_interval)."""
    init_scale: float = 65536.0
    growth_interval: int = 2000


@dataclass
class KeepHighPrecision:
    """Staged rollout: these Linears stay in bf16 (fnmatch patterns on dotted names, and layers).
    Defaults: the planner's PLAN_DEFAULTS (bench/precision/plan.py), read, not copied."""
    patterns: list[str] = field(default_factory=lambda: list(_PLAN["keep_high_precision"]["patterns"]))
    first_n_layers: int = _PLAN["keep_high_precision"]["first_n_layers"]
    last_n_layers: int = _PLAN["keep_high_precision"]["last_n_layers"]


@dataclass
class HighPrecision:
    """fp32 and bf16: no knobs beyond the name."""
    name: str = MISSING


@dataclass
class FP16Precision(HighPrecision):
    loss_scale: LossScale = field(default_factory=LossScale)


# A recipe knob's default is the ScalingRecipe dataclass's (bench/precision/recipes.py): read, not copied.
_KNOB = {f.name: f.default for f in dataclasses.fields(ScalingRecipe)}


@dataclass
class FP8Precision:
    """An FP8 recipe (DESIGN.md §5): its YAML names it and sets what sets it apart (scaling,
    formats, granularity); every other knob defaults as in `ScalingRecipe`. Knobs of other scalings are
    absent (a typo, not a no-op)."""
    name: str = MISSING
    scaling: str = MISSING
    engine: str = _PLAN["engine"]  # auto (te > torchao > reference) | reference | torchao | te
    fwd_format: str = _KNOB["fwd_format"]    # input and weight casts
    grad_format: str = _KNOB["grad_format"]  # grad_output casts
    pow2_scales: bool = _KNOB["pow2_scales"]  # round scales down to powers of two
    fast_accum: bool = _KNOB["fast_accum"]   # fp32-accumulation shortcut in the forward GEMM (GPU only)
    weights_only: bool = _PLAN["weights_only"]  # generator side only: W8A16 (activations in the compute dtype)
    keep_high_precision: KeepHighPrecision = field(default_factory=KeepHighPrecision)


@dataclass
class DelayedPrecision(FP8Precision):
    amax_history_len: int = _KNOB["amax_history_len"]
    amax_compute_algo: str = _KNOB["amax_compute_algo"]  # max | most_recent
    margin: int = _KNOB["margin"]


@dataclass
class BlockwisePrecision(FP8Precision):
    act_block: int = _KNOB["act_block"]
    weight_block: int = _KNOB["weight_block"]


@dataclass
class MXPrecision(FP8Precision):
    mx_block: int = _KNOB["mx_block"]
    mx_scale_rounding: str = _KNOB["mx_scale_rounding"]  # floor (OCP spec) | rceil


PRECISION_SCHEMAS = {"high": HighPrecision, "fp16": FP16Precision, "fp8": FP8Precision,
                     "fp8_delayed": DelayedPrecision, "fp8_blockwise": BlockwisePrecision, "mx": MXPrecision}


# --- precision: FP4 recipes (nvfp4, mxfp4; bench/precision/fp4_registry.py) --------------------
# Each knob's default is the registered recipe's (RECIPES, from fp4.FP4_DEFAULTS): read, not copied.
# No scaling/format keys: an FP4 recipe's name fixes its element format and block.
def _fp4_knob(recipe: str, knob: str):
    from bench.precision.recipes import RECIPES

    return getattr(RECIPES[recipe], knob)


@dataclass
class FP4Precision:
    """An FP4 recipe (DESIGN.md §5 nvfp4/mxfp4): planning keys as FP8Precision's, and the switches."""
    name: str = MISSING
    engine: str = _PLAN["engine"]  # auto (reference trainer / inference generator) | reference | inference
    weights_only: bool = _PLAN["weights_only"]  # generator side only: W4A16 (activations in the compute dtype)
    keep_high_precision: KeepHighPrecision = field(default_factory=KeepHighPrecision)


@dataclass
class NVFP4Precision(FP4Precision):
    weight_2d: bool = _fp4_knob("nvfp4", "weight_2d")    # 16x16 weight tiles (false: 1x16 along K)
    rht: bool = _fp4_knob("nvfp4", "rht")                # random Hadamard transform on the wgrad operands
    stochastic_rounding: bool = _fp4_knob("nvfp4", "stochastic_rounding")  # of gradients


@dataclass
class MXFP4Precision(FP4Precision):
    rht: bool = _fp4_knob("mxfp4", "rht")
    stochastic_rounding: bool = _fp4_knob("mxfp4", "stochastic_rounding")
    mx_scale_rounding: str = _fp4_knob("mxfp4", "mx_scale_rounding")  # floor (OCP spec) | rceil


PRECISION_SCHEMAS.update(nvfp4=NVFP4Precision, mxfp4=MXFP4Precision)


# --- the other groups -----------------------------------------------------------------------
@dataclass
class ISCorrection:
    """DESIGN.md §6 IS correction; the bounds apply to the modes that read them."""
    mode: str = MISSING                 # none | tis | icepop | seq_tis | seq_mask | geo_mask (the file's name)
    cap: float = 2.0                    # C: upper truncation for tis / seq_tis / geo_mask
    lo: float = 0.5                     # band for icepop / seq_mask / geo_mask
    hi: float = 2.0
    veto: Optional[float] = None        # e.g. 1e-4: drop a sequence holding any token with rho below it
    batch_normalize: bool = False       # divide weights by their masked mean
    lower_cap: Optional[float] = None   # tis only: lower clamp max(w, lower_cap)


@dataclass
class WandbConfig:
    mode: str = "auto"            # auto | online | offline | disabled (auto: logger.py wandb_mode)
    project: str = "fp8bench"
    entity: Optional[str] = None
    group: Optional[str] = None   # default: the sweep name, else the recipe


@dataclass
class LoggerConfig:
    progress: bool = True         # live rich progress bar (key metrics, every step) on a TTY
    console_every: int = 25       # a console line every N steps and at the last step (above the bar on a TTY)
    events_every: int = 100       # an event repeated at one (kind, site): first printed, then a count every N
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class MonitorConfig:
    interval: int = 25            # FP8 cast statistics every N steps (0 = off); non-finite checks every step
    per_module: bool = True       # numerics/<module>/<role>/<stat>; false keeps only the aggregates
    shadow: list[str] = field(default_factory=list)  # other FP8 recipes to evaluate on the same tensors


@dataclass
class StressConfig:
    """bench/numerics/stress.py: an activation outlier in one Linear's input channel."""
    enabled: bool = False
    module: str = "layers.1.mlp.down"
    channel: int = 0
    from_step: int = 60
    magnitude: float = 1000.0
    growth: float = 1.5


@dataclass
class WarmupConfig:
    """GRPO's cached supervised warm-up (bench/rl/warmstart.py)."""
    steps: int = 150              # ~45% greedy accuracy on reversal: room to improve, reward to learn from
    batch_size: int = 32
    lr: float = 3.0e-3
    seed: int = 0
    cache_dir: str = "runs/cache"


@dataclass
class GeneratorConfig:
    backend: str = DEFAULT_BACKEND  # native (the project's generator) | vllm (a real vLLM engine, DESIGN §13)
    kv_cache_dtype: str = "auto"  # auto (the generator's compute dtype) | fp8
    use_kv_cache: bool = True     # false: recompute the whole prefix per token (the cache-free reference)
    kv_cache_headroom: float = 1.0  # FP8 KV cache: scale set at prefill from amax x headroom (>= 1)
    kernels: KernelConfig = field(default_factory=KernelConfig)  # generator/kernels=exact|inference (DESIGN §11)
    logprobs_mode: str = LOGPROBS_MODES[0]  # processed | raw (vLLM's default raw_logprobs; bench/generation/generator.py)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)  # SYNTHETIC noise, off by default (issue 25)


@dataclass
class AttributionConfig:
    """In-run attribution (DESIGN §11): trainer vs generator hidden states per site."""
    interval: int = 0             # every N-th step logs attrib/<site>/* and appends attribution.jsonl (0 = off)
    threshold: float = 1e-9       # first_divergent: the first site whose rel_diff exceeds this


# --- model: the built-in decoder's dims plus the model kind (bench/models) ------------------
@dataclass
class ModelConfig(BuiltinModelConfig):
    """The `model` group's schema (named as the built-in model's config it extends, so
    `schema.ModelConfig()` is the default model). `kind` picks the builder (bench/models): builtin (bench.models.decoder.Transformer,
    the inherited dims) or hf (a transformers causal LM, DESIGN.md §12): `path` a local checkpoint
    directory (its config.json sets the dims and its tokenizer replaces the task's), or `arch` with
    the inherited dims and `n_kv_heads` for a random-weight model on the task's own tokenizer."""
    kind: str = "builtin"                # builtin | hf
    path: Optional[str] = None           # hf: a save_pretrained directory (local only, never a hub name)
    arch: Optional[str] = None           # hf without path: llama | qwen2 | qwen3
    n_kv_heads: int = 0                  # hf arch: key/value heads (GQA); 0 = n_heads
    chat_template: bool = False          # hf path: wrap prompts in the tokenizer's chat template


# --- the recipes' top level -----------------------------------------------------------------
@dataclass
class RunConfig:
    """Keys both recipes share. `run_name`/`run_dir` are interpolations set in the recipe YAML."""
    recipe: str = MISSING
    seed: int = 0
    steps: int = MISSING
    eval_every: int = MISSING
    eval_problems: int = 200
    eval_kv_cache: bool = False   # greedy eval with a KV cache (long answers), not full recompute (bench/train/eval.py)
    eval_regression_margin: float = 0.1  # accuracy drop below this run's best -> eval_regression event
    checkpoint_every: int = MISSING
    keep_checkpoints: int = 2
    device: str = "auto"          # auto | cpu | cuda | cuda:N
    threads: int = 0              # torch.set_num_threads (0 = torch's default)
    cpu_half_gemm: str = "auto"   # auto | native | fp32: bf16/fp16 CPU GEMMs (bench/precision/cpu_gemm.py)
    parallel: str = "ddp"         # under torchrun: ddp (replicate) | fsdp (FSDP2 fully_shard per block)
    run_name: str = MISSING
    run_dir: str = MISSING
    resume: bool = False
    stop_after: Optional[int] = None  # checkpoint and stop after this step (status preempted)
    sweep: Optional[str] = None       # set under multirun: the sweep dir's name
    model: ModelConfig = MISSING
    task: Any = MISSING               # one of TASK_SCHEMAS (by its YAML's defaults list)
    optim: OptimConfig = MISSING
    logger: LoggerConfig = MISSING
    monitor: MonitorConfig = MISSING
    policy: PolicyConfig = MISSING
    timing: TimingConfig = MISSING    # per-phase step time and energy (bench/perf/timing.py, bench/perf/energy.py)


@dataclass
class PretrainRecipe(RunConfig):
    batch_size: int = 32
    precision: Any = MISSING          # one of PRECISION_SCHEMAS
    stress: StressConfig = MISSING


@dataclass
class GRPORecipe(RunConfig):
    mismatch_spike_threshold: float = 1.5  # token_mult_prob_error above this -> mismatch_spike event + PNG
    init_from: Optional[str] = None        # a pretrain run dir or checkpoint; null = cached supervised warm-up
    trainer_precision: Any = MISSING
    generator_precision: Any = MISSING
    is_correction: ISCorrection = MISSING
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    lm_head_fp32: bool = False             # both sides: LM head GEMM and logits in fp32 (DESIGN §11)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)


RECIPE_SCHEMAS = {"pretrain": PretrainRecipe, "grpo": GRPORecipe}


def register() -> None:
    """Put every schema into Hydra's ConfigStore (idempotent: storing again replaces)."""
    cs = ConfigStore.instance()
    for name, node in RECIPE_SCHEMAS.items():
        cs.store(name=f"{name}_schema", node=node)
    for name, node in TASK_SCHEMAS.items():
        cs.store(group="schema/task", name=name, node=node)
    for name, node in PRECISION_SCHEMAS.items():
        cs.store(group="schema/precision", name=name, node=node)


register()
