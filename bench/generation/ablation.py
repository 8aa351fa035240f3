"""Source ablation: which mismatch source explains how much of the trainer/generator disagreement.

A source is one thing the configured generator does differently from the trainer: each kernel
switch that is on (bench/generation/kernels.py), FP8 per module group (attention projections,
MLP, lm_head: the groups the configured generator actually quantizes) and the FP8 KV cache. The
same tokens (one rollout batch of the configured generator) are rescored by generators that
differ only in which sources are on, each computing the tokens as it would have generated them
(bench/generation/replay.py), and compared with the trainer's log-probs:
  alone        that source on, every other off: its own disagreement
  all_but      every source on but that one: how much the full disagreement drops without it
Shares: excess_alone = tmpe(alone) − tmpe(none), drop = tmpe(all) − tmpe(all_but); share of a
source = its drop / Σ drops (clamped at 0: interactions can make a drop negative).
"""
from __future__ import annotations

from dataclasses import asdict, replace
from fnmatch import fnmatch

import torch

from omegaconf import DictConfig, OmegaConf

from bench.generation import Generator
from bench.generation.kernels import PARAMETERS, KernelConfig, kernel_config
from bench.generation.replay import replay
from bench.precision.mixed import HIGH_PRECISION, compute_dtype
from bench.rl.mismatch import mismatch_metrics

FP8_GROUPS = {"fp8:attn": "layers.*.attn.*", "fp8:mlp": "layers.*.mlp.*", "fp8:lm_head": "lm_head"}
KERNEL_OFF = asdict(KernelConfig())


def _container(x):
    return OmegaConf.to_container(x, resolve=True) if isinstance(x, DictConfig) else dict(x)


def sources(gen_precision: dict, fp8_modules: list[str], kernels: KernelConfig, kv_fp8: bool) -> list[str]:
    """The sources the configured generator has on, in a fixed order."""
    out = [k for k, v in asdict(kernels).items() if k not in PARAMETERS and v != KERNEL_OFF[k]]
    if not fp8_modules:
        out = [s for s in out if s != "fp8_activation_scaling"]  # inert without FP8 Linears
    for group, pat in FP8_GROUPS.items():
        if any(fnmatch(m, pat) for m in fp8_modules):
            out.append(group)
    if kv_fp8:
        out.append("kv_cache:fp8")
    return out


def variant(on: set[str], gen_precision: dict, kernels: KernelConfig) -> tuple[dict | str, KernelConfig, bool]:
    """(precision config, kernels, kv_fp8) of a generator with exactly the sources `on`."""
    kc = replace(KernelConfig(), **{k: getattr(kernels, k) for k in KERNEL_OFF if k in on})
    kc = replace(kc, **{k: getattr(kernels, k) for k in PARAMETERS})
    fp8_on = [g for g in FP8_GROUPS if g in on]
    if not fp8_on:
        # No FP8 group on: the high precision the FP8 recipe computes everything else in.
        name = gen_precision["name"]
        prec = name if name in HIGH_PRECISION else {torch.float16: "fp16", torch.float32: "fp32"}.get(
            compute_dtype(name), "bf16")
    else:
        prec = dict(gen_precision)
        keep = dict(prec.get("keep_high_precision") or {})
        keep["patterns"] = list(keep.get("patterns") or []) + [FP8_GROUPS[g] for g in FP8_GROUPS if g not in on]
        keep.setdefault("first_n_layers", 0)
        keep.setdefault("last_n_layers", 0)
        prec["keep_high_precision"] = keep
    return prec, kc, "kv_cache:fp8" in on


def rescore(model_cfg, trainer_model, device, tokens, mask, prompt_len, lp_trainer, on: set[str], gen_precision,
            kernels, use_kv_cache, temperature, lm_head_fp32, kv_headroom) -> dict:
    prec, kc, kv_fp8 = variant(on, gen_precision, kernels)
    g = Generator(model_cfg, prec, device, kv_cache_dtype="fp8" if kv_fp8 else "auto",
                  kv_cache_headroom=kv_headroom, kernels=kc, lm_head_fp32=lm_head_fp32)
    g.refit(trainer_model)
    lp, _ = replay(g, tokens, prompt_len, use_kv_cache, temperature)
    mm = mismatch_metrics(lp, lp_trainer, mask)
    return {"tmpe": mm["mismatch/token_mult_prob_error"], "gen_kl_k3": mm["mismatch/gen_kl_k3"]}


def ablate(model_cfg, trainer_model, device, tokens, mask, prompt_len, lp_trainer, gen_precision, kernels,
           kv_fp8: bool, fp8_modules: list[str], use_kv_cache: bool, temperature: float, lm_head_fp32: bool,
           kv_headroom: float = 1.0) -> dict:
    """{"sources": [...], "all": {...}, "none": {...}, "rows": [{"source", "alone", "all_but", "share"}]}
    sorted by share, largest first."""
    gen_precision = _container(gen_precision) if not isinstance(gen_precision, str) else {"name": gen_precision}
    kernels = kernel_config(kernels)
    srcs = sources(gen_precision, fp8_modules, kernels, kv_fp8)
    run = lambda on: rescore(model_cfg, trainer_model, device, tokens, mask, prompt_len, lp_trainer, set(on),
                             gen_precision, kernels, use_kv_cache, temperature, lm_head_fp32, kv_headroom)
    full, none = run(srcs), run([])
    rows = [{"source": s, "alone": run([s]), "all_but": run([x for x in srcs if x != s])} for s in srcs]
    drops = [max(0.0, full["tmpe"] - r["all_but"]["tmpe"]) for r in rows]
    tot = sum(drops)
    for r, d in zip(rows, drops):
        r["share"] = d / tot if tot > 0 else 0.0
        r["excess_alone"] = r["alone"]["tmpe"] - none["tmpe"]
    rows.sort(key=lambda r: (-r["share"], -r["excess_alone"]))
    return {"sources": srcs, "all": full, "none": none, "rows": rows}
