"""Benchmark: generator decode tokens/s with and without the KV cache (64 new tokens), and
bf16 vs FP8 (W8A8) generators, measured side by side in one process. Warm-up excluded; medians.

    .venv/bin/python scripts/bench_decode.py [--batch 16] [--new 64] [--repeats 3] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.generation import Generator  # noqa: E402
from bench.model import ModelConfig, Transformer  # noqa: E402


def tokens_per_s(gen: Generator, prompts, new: int, kv: bool, repeats: int) -> float:
    run = lambda: gen.generate(prompts, new, temperature=1.0, eos_id=-1,  # never stop early
                               generator=torch.Generator(device=prompts.device).manual_seed(0), use_kv_cache=kv)
    run()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        if prompts.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return prompts.shape[0] * new / statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precisions", nargs="*", default=["fp32", "bf16", "fp8_tensorwise", "fp8_blockwise"])
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = ModelConfig(max_seq_len=8 + a.new)
    torch.manual_seed(0)
    trainer = Transformer(cfg).to(device)
    prompts = torch.randint(3, 100, (a.batch, 8), device=device)
    res = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "batch": a.batch, "new_tokens": a.new, "results": {}}
    for p in a.precisions:
        g = Generator(cfg, p, device)
        g.refit(trainer)
        kv = tokens_per_s(g, prompts, a.new, True, a.repeats)
        full = tokens_per_s(g, prompts, a.new, False, a.repeats)
        res["results"][p] = {"kv_tok_s": kv, "no_cache_tok_s": full, "kv_speedup": kv / full}
        print(f"{p:15s} KV cache {kv:9.1f} tok/s   no cache {full:9.1f} tok/s   ratio x{kv / full:.2f}", flush=True)
    base = res["results"].get("bf16", {}).get("kv_tok_s")
    for p, r in res["results"].items():
        if base and p.startswith(("fp8", "mx")):
            r["vs_bf16_kv"] = r["kv_tok_s"] / base
            print(f"{p} generator vs bf16 (KV cache): x{r['vs_bf16_kv']:.2f}")
    print(json.dumps(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
