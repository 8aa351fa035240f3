"""Adding a block format is one definition plus its registration (docs/architecture.md, "Adding a
block format"): a toy INT8 format, per-row symmetric with power-of-two scales, defined here and
registered in-test, runs through `fake_quantize`, the reference training linear (all three GEMMs),
the inference linear (W8A8 and weights-only), the stats of one cast and the planner, with no edit
to bench/precision. Every result is checked against a float64 reimplementation of the format's
definition that imports none of the code under test."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn as nn

from bench.models.decoder import ModelConfig, Transformer
from bench.precision import fake_quantize, quant_stats
from bench.precision.formats import base
from bench.precision.formats.base import QuantFormat, register_format
from bench.precision.linears.inference import InferenceLinear
from bench.precision.linears.reference import ReferenceLinear
from bench.precision.plan import apply_precision, plan_precision
from bench.precision import recipes

QMAX = 127


# --- the toy format: what a new file in bench/precision/formats/ would hold -----------------
@dataclass
class Int8Quantized:
    """x ≈ q / s, q integers in [-127, 127] (as fp32), s = 2^floor(log2(127 / amax_row)) per row."""
    q: torch.Tensor
    scale: torch.Tensor  # [rows, 1]
    tile: tuple[int, int]
    stat_keys = ("amax", "scale", "overflow_frac", "underflow_frac", "sqnr_db", "nonfinite")

    @property
    def shape(self):
        return self.q.shape

    def dequantize(self):
        return self.q / self.scale

    def zeros(self, xhat):
        return self.q == 0

    def stat_terms(self, xf, finite, nz, xhat, fmt=None):
        return {"scale": self.scale.double().min(),
                "overflow_frac": (finite & ((xf * self.scale).abs() > QMAX)).sum().double() / max(xf.numel(), 1)}


class Int8RowFormat(QuantFormat):
    name = "int8"
    scalings = ("int8_row",)
    stat_keys = Int8Quantized.stat_keys

    def tile(self, recipe, role, shape):
        return (1, shape[1])

    def quantize(self, x, recipe, role, history=None, *, stochastic=False, generator=None):
        xf = x.detach().float()
        amax = xf.abs().amax(dim=1, keepdim=True)
        _, e = torch.frexp(QMAX / amax.clamp(min=1e-30))
        s = torch.ldexp(torch.ones_like(amax), e - 1)  # largest power of two <= 127 / amax
        q = torch.round(xf * s).clamp(-QMAX, QMAX)
        return Int8Quantized(q, s, self.tile(recipe, role, xf.shape))


@pytest.fixture
def int8_registered():
    """Register the toy format (and its recipe) for one test, then restore every registry."""
    saved = (dict(recipes.RECIPES), list(recipes.SCALINGS), list(recipes.FORMAT_NAMES),
             {k: set(v) for k, v in recipes.SCALING_FORMATS.items()}, dict(base.QUANTIZERS), dict(base.FORMAT_OF))
    register_format(Int8RowFormat(), {"int8_rowwise": dict(scaling="int8_row", fwd_format="int8", grad_format="int8")})
    yield "int8_rowwise"
    for live, old in zip((recipes.RECIPES, recipes.SCALING_FORMATS, base.QUANTIZERS, base.FORMAT_OF),
                         (saved[0], saved[3], saved[4], saved[5])):
        live.clear()
        live.update(old)
    recipes.SCALINGS[:], recipes.FORMAT_NAMES[:] = saved[1], saved[2]


# --- the float64 reference (the format's definition, no code under test) --------------------
def ref_fq(a: np.ndarray) -> np.ndarray:
    """Per row: s = 2^floor(log2(127 / amax)), q = clamp(round_half_even(a·s), ±127), x̂ = q / s."""
    amax = np.abs(a).max(axis=1, keepdims=True)
    s = 2.0 ** np.floor(np.log2(QMAX / np.maximum(amax, 1e-30)))
    return np.clip(np.round(a * s), -QMAX, QMAX) / s


def data(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * torch.logspace(-2, 2, shape[0])[:, None]


def test_fake_quantize_of_a_registered_format_is_its_definition(int8_registered):
    x = data((24, 64), 0)
    got = fake_quantize(x, int8_registered).double().numpy()
    np.testing.assert_array_equal(got, ref_fq(x.double().numpy()))  # power-of-two scales: exact


def test_the_reference_linear_runs_a_registered_format_on_all_three_gemms(int8_registered):
    K, N, M = 64, 32, 24
    torch.manual_seed(0)
    lin = nn.Linear(K, N, bias=False)
    mod = ReferenceLinear.from_linear(lin, int8_registered, "l")
    x, dy = data((M, K), 1).requires_grad_(True), data((M, N), 2)
    y = mod(x)
    y.backward(dy)
    X, W, DY = x.detach().double().numpy(), lin.weight.detach().double().numpy(), dy.double().numpy()
    exp_y = ref_fq(X) @ ref_fq(W).T                       # forward: both along K
    exp_dx = ref_fq(DY) @ ref_fq(W.T).T                    # dgrad: dy and Wᵀ along N
    exp_dw = ref_fq(DY.T) @ ref_fq(X.T).T                  # wgrad: dyᵀ and xᵀ along M
    for got, exp in ((y, exp_y), (x.grad, exp_dx), (lin.weight.grad, exp_dw)):
        np.testing.assert_allclose(got.detach().double().numpy(), exp, rtol=1e-5, atol=1e-6 * np.abs(exp).max())
    # and not the high-precision GEMM: the casts are there
    assert np.abs(y.detach().double().numpy() - X @ W.T).max() > 1e-4 * np.abs(X @ W.T).max()


@pytest.mark.parametrize("weights_only", [False, True])
def test_the_inference_linear_runs_a_registered_format(int8_registered, weights_only):
    torch.manual_seed(0)
    lin = nn.Linear(64, 32, bias=True)
    mod = InferenceLinear.from_linear(lin, int8_registered, "g", weights_only=weights_only)
    h = data((24, 64), 3)
    W, H = lin.weight.detach().double().numpy(), h.double().numpy()
    exp = (H if weights_only else ref_fq(H)) @ ref_fq(W).T + lin.bias.detach().double().numpy()
    np.testing.assert_allclose(mod(h).double().numpy(), exp, rtol=1e-5, atol=1e-6 * np.abs(exp).max())
    assert mod.weight_loads == 1


def test_the_stats_of_one_cast_of_a_registered_format(int8_registered):
    x = data((16, 64), 4)
    x[0, :8] = 0.0
    mod = ReferenceLinear(64, 16, int8_registered, "s", bias=False)
    seen = {}
    mod.observer = lambda name, role, st: seen.setdefault(role, st)
    mod(x)
    st = seen["input"]
    assert tuple(st) == Int8Quantized.stat_keys
    X = x.double().numpy()
    xh = ref_fq(X)
    nz = X != 0
    assert st["amax"] == np.abs(X).max() and st["overflow_frac"] == 0.0 and st["nonfinite"] == 0
    assert st["underflow_frac"] == pytest.approx(((xh == 0) & nz).sum() / nz.sum())
    assert st["scale"] == (2.0 ** np.floor(np.log2(QMAX / np.abs(X).max(axis=1)))).min()
    assert st["sqnr_db"] == pytest.approx(20 * math.log10(np.linalg.norm(X) / np.linalg.norm(X - xh)), rel=1e-9)
    assert quant_stats(x, Int8RowFormat().quantize(x, None, "input")) == st


def test_the_planner_plans_a_registered_format_on_both_sides(int8_registered):
    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=16)
    m = Transformer(cfg)
    plan, eng = plan_precision(m, int8_registered, "cpu")
    apply_precision(m, plan, eng)
    assert plan.engine == "reference" and isinstance(m.layers[0].mlp.down, ReferenceLinear)
    assert plan.summary()["formats"] == "int8/int8"
    g = Transformer(cfg)
    plan, eng = plan_precision(g, {"name": int8_registered, "weights_only": True}, "cpu", side="generator")
    apply_precision(g, plan, eng)
    assert plan.engine == "inference" and isinstance(g.layers[1].attn.q, InferenceLinear)
    tokens = torch.randint(0, 64, (2, 8))
    assert torch.isfinite(m(tokens)).all() and torch.isfinite(g(tokens)).all()
