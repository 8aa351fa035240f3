"""The reference FP8 linear: every GEMM against float64 on the operands the recipe prescribes,
the _scaled_mm path, delayed-scaling state, the observer hook, swapping, and torchao agreement."""
import copy
import dataclasses
import logging

import numpy as np
import pytest
import torch

from bench.precision import RECIPES, ReferenceLinear as ReferenceFP8Linear, get_recipe, quant_stats, quantize
from test_quantize import ref_quantize

U32 = 2.0 ** -24  # fp32 unit roundoff

# The FP8 linear's recipes (nvfp4/mxfp4 run ReferenceFP4Linear: tests/test_fp4_linear.py).
FP8_RECIPES = [n for n, r in RECIPES.items() if r.fwd_format != "e2m1"]
VARIANTS = {**{n: n for n in FP8_RECIPES},
            "fp8_delayed_margin1": {"name": "fp8_delayed", "margin": 1},
            "fp8_blockwise_32x64": {"name": "fp8_blockwise", "act_block": 32, "weight_block": 64},
            "mxfp8_floor": {"name": "mxfp8", "mx_scale_rounding": "floor"}}


def make(recipe, n_in=160, n_out=96, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(n_in, n_out, bias=bias)
    with torch.no_grad():  # magnitudes varying along both dims, so rows, columns and tiles differ
        lin.weight.mul_(torch.logspace(-1, 1, n_out)[:, None] * torch.logspace(1, -1, n_in)[None, :])
    return lin, ReferenceFP8Linear.from_linear(lin, recipe, "blk.proj")


def inputs(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * torch.logspace(-2, 1, shape[-1])


def ref_gemm(a: np.ndarray, b: np.ndarray):
    """a·bᵀ in float64, and the fp32-accumulation error bound (K + 4)·u·(|a|·|b|ᵀ)."""
    return a @ b.T, (a.shape[1] + 4) * U32 * (np.abs(a) @ np.abs(b).T)


def assert_gemm(got: torch.Tensor, a: np.ndarray, b: np.ndarray):
    exp, tol = ref_gemm(a, b)
    err = np.abs(got.detach().double().numpy() - exp)
    assert np.all(err <= tol + 1e-30), f"max err {err.max():.3g} vs tol {tol[err.argmax() // tol.shape[1]].max():.3g}"


def run_step(mod, x, dy):
    xr = x.clone().requires_grad_()
    y = mod(xr)
    y.backward(dy)
    return y, xr.grad


@pytest.mark.parametrize("name", list(VARIANTS))
def test_forward_and_both_gradients_equal_float64_on_the_prescribed_operands(name):
    # M = 48 tokens ([2, 24] flattened), K = 160, N = 96: partial 1x128 / 128x128 / 1x32 tiles in
    # every GEMM. Delayed scaling is checked as of a first step (empty histories).
    r = get_recipe(VARIANTS[name])
    lin, mod = make(r)
    x, dy = inputs((2, 24, 160)), inputs((2, 24, 96), seed=2)
    y, dx = run_step(mod, x, dy)
    x2, dy2, w = x.reshape(48, 160), dy.reshape(48, 96), lin.weight.detach()
    xq = lambda t, role: ref_quantize(t, r, role)["xhat"]
    # forward: x [M,K] and W [N,K] along K
    assert y.shape == (2, 24, 96)
    exp_y, tol_y = ref_gemm(xq(x2, "input"), xq(w, "weight"))
    exp_y = exp_y + lin.bias.detach().double().numpy()
    err = np.abs(y.detach().reshape(48, 96).double().numpy() - exp_y)
    assert np.all(err <= tol_y + 2 * U32 * np.abs(exp_y))
    # dgrad: dy [M,N] and Wᵀ [K,N] along N
    assert_gemm(dx.reshape(48, 160), xq(dy2, "grad_output"), xq(w.t(), "weight"))
    # wgrad: dyᵀ [N,M] and xᵀ [K,M] along M
    assert_gemm(lin.weight.grad, xq(dy2.t(), "grad_output"), xq(x2.t(), "input"))
    # bias: never quantized
    np.testing.assert_allclose(lin.bias.grad.double().numpy(), dy2.double().sum(0).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["fp8_tensorwise", "fp8_delayed"])
def test_scaled_mm_path_equals_the_dequantized_matmul_path(name, monkeypatch):
    calls = []
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: calls.append(a[0].dtype) or real(*a, **k))
    x, dy = inputs((64, 160)), inputs((64, 96), seed=2)
    out = {}
    for use in (True, False):
        lin, mod = make(name)
        mod.use_scaled_mm = use
        y, dx = run_step(mod, x, dy)
        out[use] = (y.detach(), dx, lin.weight.grad)
    # forward (x: E4M3), dgrad (dy: E5M2), wgrad (dyᵀ: E5M2): all three GEMMs on the scaled path
    assert calls == [torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e5m2]
    for a, b in zip(out[True], out[False]):
        scale = float(b.abs().max())
        assert float((a - b).abs().max()) <= 200 * U32 * scale  # accumulation order and 1/s rounding only


def test_scaled_mm_is_skipped_for_dims_not_divisible_by_16(monkeypatch):
    calls = []
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: calls.append(1) or real(*a, **k))
    lin, mod = make("fp8_tensorwise")
    run_step(mod, inputs((40, 160)), inputs((40, 96)))  # M = 40: every GEMM has M as a dim
    assert calls == []


@pytest.mark.parametrize("name", FP8_RECIPES)
def test_gradients_flow_to_weight_bias_and_input(name):
    lin, mod = make(name)
    params_before = {id(p) for p in lin.parameters()}
    y, dx = run_step(mod, inputs((32, 160)), inputs((32, 96)))
    assert {id(p) for p in mod.parameters()} == params_before
    for t in (dx, lin.weight.grad, lin.bias.grad):
        assert t is not None and bool(torch.isfinite(t).all()) and float(t.abs().sum()) > 0
    # An input that needs no grad (first layer): only the parameters get one.
    lin.weight.grad = None
    mod(inputs((32, 160))).sum().backward()
    assert lin.weight.grad is not None


def test_output_dtype_follows_the_input_or_the_autocast_dtype():
    lin, mod = make("fp8_rowwise")
    xb = inputs((16, 160)).bfloat16().requires_grad_()
    y = mod(xb)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and lin.weight.grad.dtype == torch.float32
    x = inputs((16, 160)).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya = mod(x)
    assert ya.dtype == torch.bfloat16
    ya.float().sum().backward()
    assert x.grad.dtype == torch.float32
    # Under autocast the input is quantized from its bf16 value, as torchao does.
    ref = mod(x.detach().bfloat16())
    assert torch.equal(ya, ref)


def test_delayed_scaling_uses_the_stale_history_then_records_the_amax():
    lin, mod = make("fp8_delayed", bias=False)
    seen = []
    mod.observer = lambda name, role, st: seen.append((name, role, st))
    x1, dy = inputs((32, 160)), inputs((32, 96), seed=2)
    a1 = float(x1.abs().max())
    run_step(mod, x1, dy)  # first step: the history is seeded with this amax (current scaling)
    h = mod.hist["input"]
    assert float(h.history[0]) == a1 and int(h.count) == 1 and float(h.history[1:].abs().sum()) == 0
    assert seen[0][2]["scale"] == float(quantize(x1, "fp8_tensorwise").scale) and seen[0][2]["overflow_frac"] == 0
    assert int(mod.hist["weight"].count) == 1 and int(mod.hist["grad_output"].count) == 1
    seen.clear()
    x2 = x1 * 4  # activations jump: the scale from history (amax a1) saturates the new outliers
    run_step(mod, x2, dy)
    st_in = seen[0][2]
    assert st_in["scale"] == float(mod.hist["input"].prev_scale) == pytest.approx(448 / a1, rel=1e-6)
    assert st_in["overflow_frac"] > 0
    assert mod.hist["input"].history[:2].tolist() == [float(x2.abs().max()), a1]
    # No-grad / eval forwards (rollouts, evaluation) never move the histories.
    with torch.no_grad():
        mod(x2 * 10)
    mod.eval()
    mod(x2 * 10)
    assert int(mod.hist["input"].count) == 2 and int(mod.hist["weight"].count) == 2


@pytest.mark.parametrize("name", FP8_RECIPES)
def test_observer_receives_input_weight_and_grad_output_once_per_step(name):
    lin, mod = make(name)
    seen = []
    mod.observer = lambda n, role, st: seen.append((n, role, st))
    x, dy = inputs((32, 160)), inputs((32, 96), seed=2)
    run_step(mod, x, dy)
    assert [(n, role) for n, role, _ in seen] == [("blk.proj", "input"), ("blk.proj", "weight"), ("blk.proj", "grad_output")]
    # The stats are those of the actual operands and the scales used (first step: current scaling).
    for (_, role, st), t in zip(seen, (x, lin.weight.detach(), dy)):
        assert st == quant_stats(t, quantize(t, name, role))
        assert set(st) == {"amax", "scale", "overflow_frac", "underflow_frac", "sqnr_db", "nonfinite"}
    mod.observer = None
    run_step(mod, x, dy)
    assert len(seen) == 3


def test_state_dict_round_trip_resumes_delayed_scaling_exactly():
    lin, mod = make("fp8_delayed")
    for i in range(3):
        run_step(mod, inputs((32, 160), seed=10 + i) * (i + 1), inputs((32, 96), seed=20 + i))
    sd = copy.deepcopy(mod.state_dict())
    assert {k for k in sd if k.startswith("hist.")} == {f"hist.{r}.{b}" for r in ("input", "weight", "grad_output")
                                                        for b in ("history", "prev_scale", "count")}
    lin2, mod2 = make("fp8_delayed", seed=5)
    mod2.load_state_dict(sd)
    x, dy = inputs((32, 160), seed=99) * 3, inputs((32, 96), seed=98)
    y1, dx1 = run_step(mod, x, dy)
    y2, dx2 = run_step(mod2, x, dy)
    assert torch.equal(y1, y2) and torch.equal(dx1, dx2)
    for b in ("history", "prev_scale", "count"):
        assert torch.equal(getattr(mod.hist["input"], b), getattr(mod2.hist["input"], b))


def test_from_linear_shares_parameters_and_to_linear_hands_them_back():
    lin, _ = make("fp8_tensorwise")
    opt = torch.optim.Adam(lin.parameters(), lr=1e-3)
    lin(inputs((8, 160))).sum().backward()
    opt.step()
    mod = ReferenceFP8Linear.from_linear(lin, "fp8_tensorwise", "m")
    assert mod.weight is lin.weight and mod.bias is lin.bias
    assert (mod.in_features, mod.out_features) == (160, 96)
    mod(inputs((16, 160))).sum().backward()
    opt.step()  # Adam state is keyed by the Parameter objects: it carried over
    assert int(opt.state[lin.weight]["step"]) == 2
    back = mod.to_linear()
    assert type(back) is torch.nn.Linear and back.weight is lin.weight and back.bias is lin.bias
    no_bias = ReferenceFP8Linear.from_linear(torch.nn.Linear(32, 16, bias=False), "mxfp8", "n")
    assert no_bias.bias is None and no_bias.to_linear().bias is None and no_bias.hist is None


def test_square_weight_blocks_make_the_transposed_requantization_identical():
    w = inputs((256, 384), seed=4)
    q, qt = quantize(w, "fp8_blockwise", "weight"), quantize(w.t(), "fp8_blockwise", "weight")
    t = q.t()
    assert torch.equal(qt.data.view(torch.uint8), t.data.view(torch.uint8)) and torch.equal(qt.scale, t.scale)


@pytest.mark.parametrize("scaling", ["tensorwise", "rowwise"])
def test_reference_agrees_with_torchao_emulated_float8_training(scaling):
    """Measured on torch 2.13 / torchao 0.18 CPU: rowwise is bit-identical (power-of-two scales,
    same operands, same fp32 matmuls); tensorwise differs by fp32 ulps (max abs diff ~1e-6 on |y|
    ~ 7, ~3e-5 on |dW| ~ 250) because torchao's s = 448 / amax is scalar · reciprocal(amax),
    rounded to nearest twice, while ours is rounded toward zero (so amax·s never exceeds max), and
    the reference runs the per-tensor GEMMs through torch._scaled_mm."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    float8 = pytest.importorskip("torchao.float8")
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 128, bias=True)
    ao = torch.nn.Sequential(torch.nn.Linear(256, 128, bias=True))
    ao[0].load_state_dict(lin.state_dict())
    cfg = dataclasses.replace(float8.Float8LinearConfig.from_recipe_name(scaling), emulate=True)
    float8.convert_to_float8_training(ao, config=cfg)
    ref = ReferenceFP8Linear.from_linear(lin, f"fp8_{scaling}", "l")
    x = inputs((64, 256))
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yr = ao(xa), ref(xr)
    g = torch.randn_like(ya)
    ya.backward(g)
    yr.backward(g)
    pairs = {"y": (yr, ya), "dx": (xr.grad, xa.grad), "dw": (lin.weight.grad, ao[0].weight.grad),
             "db": (lin.bias.grad, ao[0].bias.grad)}
    for k, (a, b) in pairs.items():
        diff, mag = float((a - b).detach().abs().max()), float(b.detach().abs().max())
        assert diff <= 1e-6 * mag, (k, diff, mag)
