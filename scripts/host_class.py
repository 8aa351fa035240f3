"""Print this host's class for scripts/run.sh as KEY=VALUE lines (sourced by the shell).

  HOST_CLASS   avx512_bf16  a CPU with native bf16 dot products (AVX512-BF16 or AMX-BF16 in
                            /proc/cpuinfo): bf16 GEMMs run at speed
               avx2         a CPU without them: torch's own bf16 and fp16 GEMMs are 15-35x slower
                            than fp32 there, so runs take them through fp32 (cpu_half_gemm=auto,
                            bench/precision/cpu_gemm.py)
               cuda         an NVIDIA GPU is visible
  HOST_CAPABILITY  torch.backends.cpu.get_cpu_capability() (or the CUDA compute capability)
  HOST_CORES   usable cores (sched_getaffinity)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.precision.cpu_gemm import native_bf16_dot  # noqa: E402  (one place for the flag test)


def host_class() -> tuple[str, str]:
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return "cuda", f"sm{major}{minor}"
    cap = torch.backends.cpu.get_cpu_capability()
    return ("avx512_bf16" if native_bf16_dot() else "avx2"), cap


if __name__ == "__main__":
    cls, cap = host_class()
    print(f"HOST_CLASS={cls}\nHOST_CAPABILITY={cap}\nHOST_CORES={len(os.sched_getaffinity(0))}")
