"""generator.backend: which engine samples the rollouts (DESIGN §13), and the one factory for it.

  native  bench/generation/generator.py Generator: the project's own engine (kernels, FP8/FP4)
  vllm    bench/generation/vllm_backend.py VLLMGenerator: a real vLLM engine, its own process
Recipes build the generator with build_generator and end it with close_generator (the vLLM
engine is a process: it must end with the run, also when the run fails).
"""
from __future__ import annotations

BACKENDS = ("native", "vllm")
DEFAULT_BACKEND = "native"


def backend_of(gen_cfg) -> str:
    return str(getattr(gen_cfg, "backend", DEFAULT_BACKEND))


def build_generator(cfg, model_cfg, device):
    """The run's generator for cfg.generator.backend (already validated)."""
    gen = cfg.generator
    if backend_of(gen) == "vllm":
        from bench.generation.vllm_backend import VLLMGenerator, logprobs_mode
        from bench.models import meta_model
        from bench.precision.plan import plan_precision

        plan, _ = plan_precision(meta_model(model_cfg), cfg.generator_precision, device, side="generator")
        return VLLMGenerator(model_cfg, plan, kv_cache_dtype=gen.kv_cache_dtype, logprobs=logprobs_mode(gen),
                             seed=cfg.seed)
    from bench.generation.generator import Generator

    return Generator(model_cfg, cfg.generator_precision, device, kv_cache_dtype=gen.kv_cache_dtype,
                     kv_cache_headroom=gen.kv_cache_headroom, kernels=gen.kernels, lm_head_fp32=cfg.lm_head_fp32,
                     logprobs_mode=gen.logprobs_mode)


def close_generator(generator, summary: dict | None = None) -> None:
    """Ends the generator's engine process, if it has one (the native generator has none), after
    adding what it recorded (the vLLM engine's versions, start-up, weight-sync cost) to `summary`."""
    if summary is not None and hasattr(generator, "summary"):
        summary.update(generator.summary())
    close = getattr(generator, "close", None)
    if close is not None:
        close()
