"""Side-by-side timing of bf16/fp16 CPU GEMMs: torch's native kernel vs the fp32 route of
bench/precision/cpu_gemm.py (cpu_half_gemm=fp32), on the GEMM shapes of one GRPO step of
model=tiny (64 rollouts x 24 tokens = 1536 rows; d_model 128, d_ff 384), forward and backward.

    .venv/bin/python scripts/bench_cpu_gemm.py [--threads 1] [--repeats 20] [--json OUT]

Prints one row per (dtype, shape): ms per call each way and the ratio native / fp32-route, measured
in the same process one after the other. A ratio is this host's, nothing more: on a CPU with
native bf16 dot products (AVX512-BF16, AMX) the native kernel is the fast one and `auto` keeps it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.precision.cpu_gemm import half_gemm_via_fp32, native_bf16_dot  # noqa: E402

SHAPES = [(1536, 128, 384), (1536, 384, 128), (1536, 128, 128), (128, 1536, 384)]  # (M, K, N): fwd and wgrad


def per_call_ms(fn, repeats: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        for m, k, n in SHAPES:
            x, w = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
            native = per_call_ms(lambda: x @ w, a.repeats)
            with half_gemm_via_fp32():
                route = per_call_ms(lambda: x @ w, a.repeats)
            fp32 = per_call_ms(lambda: x.float() @ w.float(), a.repeats)
            rows.append({"dtype": str(dtype).split(".")[1], "shape": [m, k, n], "native_ms": native,
                         "fp32_route_ms": route, "plain_fp32_ms": fp32, "native_over_route": native / route})
            print(f"{rows[-1]['dtype']:9s} {m}x{k}x{n:<5d} native {native:8.2f} ms  fp32 route {route:7.2f} ms  "
                  f"(plain fp32 {fp32:6.2f} ms)  native/route {native / route:6.1f}x")
    info = {"capability": torch.backends.cpu.get_cpu_capability(), "native_bf16_dot": native_bf16_dot(),
            "threads": a.threads, "torch": torch.__version__, "rows": rows}
    print(f"capability {info['capability']}, native bf16 dot products: {info['native_bf16_dot']}, threads {a.threads}")
    if a.json:
        Path(a.json).write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
