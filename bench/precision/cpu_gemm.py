"""bf16 and fp16 GEMMs on CPUs without native bf16 dot products: the same numbers, far faster.

On a CPU without AVX512-BF16 or AMX (an "AVX2-only" host), torch's bf16 and fp16 matmuls have no
bf16 dot-product instructions to use and run 15-35x slower than the route below on the GEMM
shapes of a tiny GRPO step (scripts/bench_cpu_gemm.py; docs/bench/cpu_gemm_avx2.json). That made
the main job take about 25 minutes on such a host, nearly all of it in slow half GEMMs.

What this route computes is a half GEMM with fp32 accumulation: each product a_ik·b_kj of two
bf16 values, summed in fp32, then one rounding of the fp32 result to bf16 (with `addmm`, the bias
is added in fp32 before that rounding). The product of two bf16 values has at most 2·8 = 16
significant bits and that of two fp16 values 2·11 = 22, both within fp32's 24: every product is
exact in fp32, so an fp32 GEMM over the same half-valued operands, rounded once, is that
computation; only the order of the fp32 additions is the fp32 BLAS's own. Against torch's native
CPU half kernel on the same operands it differs in under 1% of elements, each within the fp32
accumulation bound (tests/test_cpu_half_gemm.py checks both against a float64 reference). fp16
overflow is kept: an fp32 result beyond 65504 rounds to inf, as the native kernel's does.

`half_gemm_via_fp32()` replaces, while it is entered, torch's CPU kernels of the four GEMM ops that
`F.linear` and `torch.matmul` decompose into (mm, addmm, bmm, baddbmm), through torch.library at
the CPU dispatch key: below autograd and autocast, so the forward and the backward GEMMs alike are
caught after autocast has rounded the operands. A half-precision call is widened to fp32 and its
result rounded once; any other dtype goes to the op's `out=` overload, a separate registration
that runs torch's own kernel, so fp32 GEMMs are unchanged to the bit. Leaving the context removes
the override (the native kernels are back). A TorchDispatchMode would do the same but pays a
Python call on *every* op (measured: a third of a GRPO step); this pays one per GEMM.

`cpu_half_gemm` (a top-level recipe key): `auto` (fp32 on an AVX2-only CPU, native elsewhere),
`native`, `fp32`. summary.json records what ran (`half_gemm`: fp32 or native).
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch

HALF = (torch.bfloat16, torch.float16)
CHOICES = ("auto", "native", "fp32")


def native_bf16_dot() -> bool:
    """True when this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags"))
    except (OSError, StopIteration):
        return True  # not Linux / unknown: assume native rather than change what runs
    return bool(set(flags.split()) & {"avx512_bf16", "amx_bf16"})


def resolve(choice: str, device: torch.device) -> str:
    """What `cpu_half_gemm=choice` runs on `device`: 'fp32' or 'native' (CUDA is always native)."""
    if choice not in CHOICES:
        raise ValueError(f"cpu_half_gemm={choice!r}; valid: {', '.join(CHOICES)}")
    if device.type != "cpu":
        return "native"
    if choice == "auto":
        return "native" if native_bf16_dot() else "fp32"
    return choice


def _widen(*tensors):
    """(fp32 operands, the half dtype to round back to) or (the operands, None) if not half."""
    dtype = tensors[0].dtype
    if dtype in HALF and all(t.dtype == dtype for t in tensors):
        return [t.float() for t in tensors], dtype
    return list(tensors), None


def _back(out, dtype):
    return out if dtype is None else out.to(dtype)


def _mm(a, b):
    (a, b), dtype = _widen(a, b)
    return _back(torch.mm(a, b, out=a.new_empty(0)), dtype)


def _bmm(a, b):
    (a, b), dtype = _widen(a, b)
    return _back(torch.bmm(a, b, out=a.new_empty(0)), dtype)


def _addmm(c, a, b, *, beta=1, alpha=1):
    (c, a, b), dtype = _widen(c, a, b)
    return _back(torch.addmm(c, a, b, beta=beta, alpha=alpha, out=a.new_empty(0)), dtype)


def _baddbmm(c, a, b, *, beta=1, alpha=1):
    (c, a, b), dtype = _widen(c, a, b)
    return _back(torch.baddbmm(c, a, b, beta=beta, alpha=alpha, out=a.new_empty(0)), dtype)


@contextlib.contextmanager
def half_gemm_via_fp32():
    """While entered: bf16/fp16 CPU GEMMs run as fp32 GEMMs on the same operands, rounded once."""
    lib = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():  # "overriding a previously registered kernel": that is the point
        warnings.simplefilter("ignore")
        for name, fn in (("mm", _mm), ("bmm", _bmm), ("addmm", _addmm), ("baddbmm", _baddbmm)):
            lib.impl(name, fn, "CPU")
    try:
        yield
    finally:
        lib._destroy()  # the native CPU kernels are registered again


def half_gemm_mode(choice: str, device: torch.device):
    """The context a run's compute goes in: the mode when `choice` resolves to fp32, else nothing."""
    return half_gemm_via_fp32() if resolve(choice, device) == "fp32" else contextlib.nullcontext()
