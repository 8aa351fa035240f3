"""bf16/fp16 CPU GEMMs through fp32 (bench/precision/cpu_gemm.py): the same numbers a half GEMM
with fp32 accumulation computes, checked against a float64 reference written here."""
from __future__ import annotations

import pytest
import torch

from bench.precision.cpu_gemm import half_gemm_mode, half_gemm_via_fp32, resolve

HALVES = [torch.bfloat16, torch.float16]


def rounded_exact(a, b, c=None, beta=1.0, alpha=1.0):
    """The float64 product (exact for these sizes up to float64 rounding), rounded once to a's dtype."""
    prod = torch.matmul(a.double(), b.double()) * alpha
    if c is not None:
        prod = prod + beta * c.double()
    return prod.to(a.dtype)


def within_fp32_accumulation_bound(out, a, b, c=None, beta=1.0, alpha=1.0) -> bool:
    """|out - exact| <= half a unit in the last place of the half dtype (the one final rounding)
    + K·u32·(|alpha|·Σ_k |a_ik||b_kj| + |beta·c_j|) (Higham's bound for a K-term fp32 recursive sum,
    u32 = 2^-24): what any half GEMM that accumulates in fp32, in any order, can differ by."""
    exact = torch.matmul(a.double(), b.double()) * alpha
    mag = torch.matmul(a.double().abs(), b.double().abs()) * abs(alpha)
    if c is not None:
        exact, mag = exact + beta * c.double(), mag + abs(beta) * c.double().abs()
    k = a.shape[-1] + 1
    half_ulp = torch.finfo(out.dtype).eps / 2 * exact.abs().clamp_min(torch.finfo(out.dtype).tiny)
    return bool(((out.double() - exact).abs() <= half_ulp + k * 2.0 ** -24 * mag).all())


@pytest.mark.parametrize("dtype", HALVES)
def test_every_gemm_op_rounds_the_fp32_sum_once_to_the_half_dtype(dtype):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(96, 200, generator=g).to(dtype), torch.randn(200, 64, generator=g).to(dtype)
    c = torch.randn(64, generator=g).to(dtype)
    with half_gemm_via_fp32():
        outs = {"mm": torch.mm(a, b), "matmul": a @ b, "addmm": torch.addmm(c, a, b, beta=0.5, alpha=2.0),
                "bmm": torch.bmm(a[None].expand(3, -1, -1), b[None].expand(3, -1, -1))[1],
                "baddbmm": torch.baddbmm(c.expand(3, 96, 64), a[None].expand(3, -1, -1), b[None].expand(3, -1, -1))[2]}
    refs = {"mm": rounded_exact(a, b), "matmul": rounded_exact(a, b), "addmm": rounded_exact(a, b, c, 0.5, 2.0),
            "bmm": rounded_exact(a, b), "baddbmm": rounded_exact(a, b, c)}
    for name, out in outs.items():
        assert out.dtype == dtype, name
        # Products of two half values are exact in fp32; only the fp32 summation order can move a
        # sum across a rounding boundary: rare, and then by one unit in the last place.
        assert (out != refs[name]).double().mean() < 0.01, name
    assert within_fp32_accumulation_bound(outs["mm"], a, b)
    assert within_fp32_accumulation_bound(outs["addmm"], a, b, c, 0.5, 2.0)
    assert within_fp32_accumulation_bound(outs["baddbmm"], a, b, c)


@pytest.mark.parametrize("dtype", HALVES)
def test_it_agrees_with_the_native_half_kernel_but_for_rare_summation_order_differences(dtype):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(64, 128, generator=g).to(dtype), torch.randn(128, 48, generator=g).to(dtype)
    native = a @ b
    with half_gemm_via_fp32():
        emulated = a @ b
    assert (native != emulated).double().mean() < 0.01
    assert within_fp32_accumulation_bound(native, a, b) and within_fp32_accumulation_bound(emulated, a, b)


def test_fp16_overflow_is_inf_as_in_the_native_kernel():
    a = torch.full((2, 4), 200.0, dtype=torch.float16)
    with half_gemm_via_fp32():
        out = a @ a.t()  # 4 * 40000 = 160000 > 65504
    assert torch.isinf(out).all() and torch.isinf(a @ a.t()).all()


def test_fp32_gemms_inside_the_context_are_torchs_own_to_the_bit():
    g = torch.Generator().manual_seed(2)
    a, b, c = torch.randn(33, 70, generator=g), torch.randn(70, 21, generator=g), torch.randn(21, generator=g)
    before = (a @ b, torch.addmm(c, a, b), torch.bmm(a[None], b[None]))
    with half_gemm_via_fp32():
        inside = (a @ b, torch.addmm(c, a, b), torch.bmm(a[None], b[None]))
    for x, y in zip(before, inside):
        assert torch.equal(x, y)


def test_autocast_forward_and_backward_gemms_both_go_through_fp32():
    """Under bf16 autocast the backward's GEMMs take bf16 grads; they must be caught too: each
    result equals the fp32 product of the same bf16 operands rounded once, to the bit."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 64, generator=g, requires_grad=True)
    w = torch.randn(32, 64, generator=g, requires_grad=True)
    gy = torch.randn(40, 32, generator=g).bfloat16()
    with half_gemm_via_fp32():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = x @ w.t()
        y.backward(gy)
    xb, wb = x.detach().bfloat16().float(), w.detach().bfloat16().float()
    assert torch.equal(y, (xb @ wb.t()).bfloat16())
    assert torch.equal(x.grad, (gy.float() @ wb).bfloat16().float())
    assert torch.equal(w.grad, (gy.float().t() @ xb).bfloat16().float())


def test_leaving_the_context_puts_the_native_kernels_back():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(16, 300, generator=g).bfloat16(), torch.randn(300, 8, generator=g).bfloat16()
    native = a @ b
    with half_gemm_via_fp32():
        pass
    assert torch.equal(a @ b, native)


def test_auto_picks_fp32_only_on_a_cpu_without_native_bf16(monkeypatch):
    import bench.precision.cpu_gemm as m

    monkeypatch.setattr(m, "native_bf16_dot", lambda: False)
    assert resolve("auto", torch.device("cpu")) == "fp32"
    assert resolve("auto", torch.device("cuda")) == "native"
    assert resolve("native", torch.device("cpu")) == "native"
    monkeypatch.setattr(m, "native_bf16_dot", lambda: True)
    assert resolve("auto", torch.device("cpu")) == "native"
    assert resolve("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="valid: auto, native, fp32"):
        resolve("fast", torch.device("cpu"))
    assert isinstance(half_gemm_mode("native", torch.device("cpu")), type(half_gemm_mode("auto", torch.device("cuda"))))


def test_nested_contexts_keep_the_route_until_the_outer_one_exits():
    """An in-process recipe entered from a test that already entered the route nests two contexts:
    leaving the inner one must not put the native kernel back under the outer one."""
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(64, 2048, generator=g).bfloat16(), torch.randn(2048, 64, generator=g).bfloat16()
    route, native = (a.float() @ b.float()).bfloat16(), a @ b
    if torch.equal(route, native):  # K = 2048: the summation order shows on the hosts tried so far
        pytest.skip("this host's native bf16 kernel sums in the route's order here: nothing to tell apart")
    with half_gemm_via_fp32():
        with half_gemm_via_fp32():
            pass
        assert torch.equal(a @ b, route)
    assert torch.equal(a @ b, native)
