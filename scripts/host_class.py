"""Print this host's class for scripts/run.sh as KEY=VALUE lines (sourced by the shell).

  HOST_CLASS   avx512_bf16  a CPU with native bf16 dot products (AVX512-BF16 or AMX-BF16 in
                            /proc/cpuinfo): bf16 GEMMs run at speed
               avx2         a CPU without them: torch emulates bf16 (and fp16) GEMMs, several
                            times slower (the user trial of issue 26: 24m52s for the matrix that
                            took 5m05s on an avx512_bf16 host)
               cuda         an NVIDIA GPU is visible
  HOST_CAPABILITY  torch.backends.cpu.get_cpu_capability() (or the CUDA compute capability)
  HOST_CORES   usable cores (sched_getaffinity)
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


def cpu_flags() -> set[str]:
    try:
        return set(next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split())
    except (OSError, StopIteration):
        return set()


def host_class() -> tuple[str, str]:
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return "cuda", f"sm{major}{minor}"
    cap = torch.backends.cpu.get_cpu_capability()
    return ("avx512_bf16" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "avx2"), cap


if __name__ == "__main__":
    cls, cap = host_class()
    print(f"HOST_CLASS={cls}\nHOST_CAPABILITY={cap}\nHOST_CORES={len(os.sched_getaffinity(0))}")
