"""Decode throughput of the generator engine, measured side by side in one run.

    .venv/bin/python scripts/bench_decode.py [--device cpu] [--repeats 5] [--batch 16] [--new-tokens 64]
                                             [--threads N] [--json OUT]

Rows: KV-cache decode vs full recompute (use_kv_cache=False, the reference path: every step
re-runs the whole fixed-width [B, P+N-1] sequence, exactly what the trainer scores) in bf16 and
fp32 (CPUs without native bf16 GEMMs run bf16 slower than fp32, which moves the ratio), and
the bf16 generator vs FP8 W8A8 generators (KV cache on), plus the FP8 KV cache. Tokens/s counts
generated tokens (batch x new tokens; no EOS, so every sequence runs the full length). One
warm-up generate per row is excluded; the rows are then timed round-robin (so drift in machine
load hits every row alike) and each row reports the median of its repeats.

On CPU the FP8 rows measure emulation, not FP8 hardware: activations are quantized in software,
per-tensor/rowwise GEMMs go through torch._scaled_mm's CPU path and blockwise/MX through fp32
GEMMs on dequantized operands. Read them as the cost of the numerics study, not as an FP8
speed-up; on an FP8 GPU the same code runs real scaled GEMMs for the per-tensor recipes.
Prints a table and one JSON line (prefix `BENCH_JSON `).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generation import Generator  # noqa: E402
from bench.models.decoder import Transformer  # noqa: E402
from bench.benchmarks.throughput import load_model_cfg, round_robin_times  # noqa: E402

CFG = load_model_cfg("tiny")  # conf/model/tiny.yaml, as the recipes build it
ROWS = [  # (label, generator precision, use_kv_cache, kv_cache_dtype)
    ("bf16 kv-cache", "bf16", True, "auto"),
    ("bf16 no-cache", "bf16", False, "auto"),
    ("fp32 kv-cache", "fp32", True, "auto"),
    ("fp32 no-cache", "fp32", False, "auto"),
    ("fp8_tensorwise kv-cache", "fp8_tensorwise", True, "auto"),
    ("fp8_blockwise kv-cache", "fp8_blockwise", True, "auto"),
    ("bf16 fp8-kv-cache", "bf16", True, "fp8"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", "--new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--json", default=None, help="also write the JSON result to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    trainer = Transformer(CFG).to(device)
    prompts = torch.randint(3, CFG.vocab_size, (args.batch, args.prompt_len), device=device)

    gens = {}
    for label, prec, kv, kv_dtype in ROWS:
        g = Generator(CFG, prec, device, kv_cache_dtype=kv_dtype)
        g.refit(trainer)
        run = lambda g=g, kv=kv: g.generate(prompts, args.new_tokens, temperature=1.0, eos_id=None, seed=0,
                                            use_kv_cache=kv)
        run()  # warm-up: allocator, kernel selection, lazy init
        gens[label] = run
    times, errors = round_robin_times(gens, args.repeats, device)
    if errors:
        raise RuntimeError(f"decode rows failed: {errors}")

    n_tok = args.batch * args.new_tokens
    tps = {label: n_tok / statistics.median(ts) for label, ts in times.items()}
    print(f"decode throughput: {CFG.n_layers}L d{CFG.d_model} ff{CFG.d_ff} V{CFG.vocab_size}, batch {args.batch}, "
          f"prompt {args.prompt_len}, {args.new_tokens} new tokens, device {device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'row':<26}{'tokens/s':>12}{'ms/step':>10}")
    for label, v in tps.items():
        print(f"{label:<26}{v:>12.0f}{1e3 * args.batch / v:>10.2f}")
    ratios = {
        "kv_cache_over_no_cache_bf16": tps["bf16 kv-cache"] / tps["bf16 no-cache"],
        "kv_cache_over_no_cache_fp32": tps["fp32 kv-cache"] / tps["fp32 no-cache"],
        "fp8_tensorwise_over_bf16": tps["fp8_tensorwise kv-cache"] / tps["bf16 kv-cache"],
        "fp8_blockwise_over_bf16": tps["fp8_blockwise kv-cache"] / tps["bf16 kv-cache"],
        "fp8_kv_cache_over_bf16_kv_cache": tps["bf16 fp8-kv-cache"] / tps["bf16 kv-cache"],
    }
    for k, v in ratios.items():
        print(f"{k:<40}{v:>8.2f}x")
    from bench.run.rundir import device_string

    result = {"device": device_string(torch.device(device)), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
              "repeats": args.repeats, "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
              "ratios": {k: round(v, 3) for k, v in ratios.items()}}
    print("BENCH_JSON " + json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
