"""The reference FP4 fake-quant linear: which operand is quantized along which dim in each GEMM,
the gradients against a float64 composition of the reference quantizer, seeded stochastic
rounding, the module plumbing, and W4A4 against the FP8 fake-quant forward."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import fp4_reference as ref
from bench.core.errors import BadInput
from bench.precision import fake_quantize
from bench.precision.formats.e2m1 import fake_quantize_fp4
from bench.precision.linears.reference import ReferenceLinear as ReferenceFP4Linear, convert_reference as convert_to_fp4
from bench.precision.formats.base import unsupported_linear
from bench.precision.formats.e2m1 import FP4_KEYS

M, K, N = 40, 64, 48   # M is not a multiple of 16: the wgrad operands are zero-padded to 48 tokens


def graded(shape, seed):
    """Magnitudes spread over both dims (rows ×10^3, cols ×10^3 across the tensor), so a block
    scale taken along the wrong dim cannot be constant across a block."""
    g = torch.Generator().manual_seed(seed)
    r, c = shape
    return torch.randn(shape, generator=g) * torch.logspace(0, 3, r)[:, None] * torch.logspace(0, 3, c)[None, :]


def run(spec, seed=0, sr_seed=0, n_out=N):
    """One forward/backward through the FP4 linear; returns the module, x, dy and the operands
    the hook saw as {(gemm, role): (t, q)}."""
    torch.manual_seed(seed)
    mod = ReferenceFP4Linear(K, n_out, spec, "l", bias=False, sr_seed=sr_seed)
    with torch.no_grad():
        mod.weight.copy_(graded((n_out, K), seed + 1) * 1e-4)
    seen = {}
    mod.operand_hook = lambda gemm, role, t, q: seen.__setitem__((gemm, role), (t.detach().clone(), q))
    x = graded((M, K), seed + 2).requires_grad_(True)
    dy = graded((M, n_out), seed + 3)
    mod(x).backward(dy)
    return mod, x, dy, seen


def scale_constant_within(q, tile) -> bool:
    """Whether the effective per-element scale x̂/q (where q != 0) is one value per tile, to fp32
    rounding (x̂ = q·d/g is rounded once to fp32; neighbouring blocks of the graded data differ
    by factors, not ulps)."""
    xh, qv = q.dequantize().double().numpy(), q.q.double().numpy()
    eff = np.where(qv != 0, xh / np.where(qv != 0, qv, 1), np.nan)
    for rs, cs, _ in ref.tiles(eff.shape, tile):
        v = eff[rs, cs][~np.isnan(eff[rs, cs])]
        if v.size and not np.allclose(v, v[0], rtol=2 ** -22, atol=0):
            return False
    return True


def pad_tokens(t):
    return np.pad(t, ((0, 0), (0, -t.shape[1] % 16)))


def rht64(t):
    return (t.reshape(-1, 16) @ ref.hadamard_T()).reshape(t.shape)


EXPECTED = {  # (gemm, role): (operand shape, tile along the GEMM's reduction dim = the last dim)
    ("fprop", "input"): ((M, K), (1, 16)), ("fprop", "weight"): ((N, K), (16, 16)),
    ("dgrad", "grad_output"): ((M, N), (1, 16)), ("dgrad", "weight"): ((K, N), (16, 16)),
    ("wgrad", "grad_output"): ((N, 48), (1, 16)), ("wgrad", "input"): ((K, 48), (1, 16)),
}


def test_every_gemm_operand_is_tiled_along_that_gemms_reduction_dim():
    _, x, dy, seen = run("nvfp4")   # TE defaults: 16x16 weights, RHT on wgrad, SR on gradients
    assert set(seen) == set(EXPECTED)
    for key, (shape, tile) in EXPECTED.items():
        t, q = seen[key]
        assert tuple(t.shape) == shape, key
        assert scale_constant_within(q, tile), key
        if tile == (1, 16):   # the data is discriminating: a 16x1 tiling would not be constant
            assert not scale_constant_within(q, (16, 1)), key
    w = seen[("fprop", "weight")][0].double().numpy()
    np.testing.assert_array_equal(seen[("dgrad", "weight")][0].double().numpy(), w.T)
    np.testing.assert_array_equal(seen[("dgrad", "grad_output")][0].double().numpy(), dy.double().numpy())
    # wgrad operands: the token-major transposes, padded to 48 tokens, through TE's RHT
    for role, src in (("input", x.detach()), ("grad_output", dy)):
        exp = rht64(pad_tokens(src.double().numpy().T))
        got = seen[("wgrad", role)][0].double().numpy()
        np.testing.assert_allclose(got, exp, rtol=0, atol=1e-5 * np.abs(exp).max())


def test_rne_operands_match_the_reference_quantizer_and_sr_operands_share_its_scales():
    _, _, _, seen = run("nvfp4")
    for key, (shape, tile) in EXPECTED.items():
        t, q = seen[key]
        r = ref.ref_nvfp4(t.double().numpy(), tile)
        np.testing.assert_array_equal(q.decode.double().numpy(), r["d"])
        if key[1] == "grad_output":   # stochastic rounding: one of the two neighbours of x·e
            v = np.abs(np.clip(ref.f32(t.double().numpy() * np.kron(r["e"], np.ones(tile))), -6, 6)).ravel()
            grid = ref.E2M1
            below = np.array([grid[grid <= a].max() for a in v])
            above = np.array([grid[grid >= a].min() for a in v])
            qv = np.abs(q.q.double().numpy()).ravel()
            assert np.all((qv == below) | (qv == above)), key
            assert not np.array_equal(q.q.double().numpy(), r["q"]), key   # SR did change something
        else:
            np.testing.assert_array_equal(q.q.double().numpy(), r["q"])


@pytest.mark.parametrize("weight_2d", [True, False])
def test_gradients_equal_the_float64_composition_of_quantized_operands(weight_2d):
    spec = {"name": "nvfp4", "rht": False, "stochastic_rounding": False, "weight_2d": weight_2d}
    mod, x, dy, _ = run(spec)
    wt = (16, 16) if weight_2d else (1, 16)
    X, W, DY = (t.detach().double().numpy() for t in (x, mod.weight, dy))
    fq = lambda a, tile=(1, 16): ref.ref_nvfp4(a, tile)["xhat"]
    y_ref = fq(X) @ fq(W, wt).T
    dx_ref = fq(DY) @ fq(W.T.copy(), wt).T
    dw_ref = fq(pad_tokens(DY.T)) @ fq(pad_tokens(X.T)).T
    with torch.no_grad():
        y = mod(x).double().numpy()
    for got, exp in ((y, y_ref), (x.grad.double().numpy(), dx_ref), (mod.weight.grad.double().numpy(), dw_ref)):
        np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-5 * np.abs(exp).max())
    exact_dw = DY.T @ X
    assert np.abs(dw_ref - exact_dw).max() > 1e-3 * np.abs(exact_dw).max()   # quantization did happen


def test_mxfp4_tiles_every_operand_1x32_along_its_reduction_dim():
    _, _, _, seen = run({"name": "mxfp4", "mx_scale_rounding": "rceil"}, n_out=64)   # N = K = 64
    for (gemm, role), (shape, _) in EXPECTED.items():
        t, q = seen[(gemm, role)]
        exp = tuple(64 if d == N else d for d in shape)
        assert q.tile == (1, 32) and tuple(t.shape) == exp, (gemm, role)   # wgrad: M padded to 64
        assert scale_constant_within(q, (1, 32)) and not scale_constant_within(q, (32, 1))


def test_stochastic_rounding_is_seeded_reproducible_and_checkpointed():
    a, xa, _, _ = run("nvfp4", sr_seed=5)
    b, xb, _, _ = run("nvfp4", sr_seed=5)
    c, xc, _, _ = run("nvfp4", sr_seed=6)
    assert torch.equal(a.weight.grad, b.weight.grad) and torch.equal(xa.grad, xb.grad)
    assert not torch.equal(a.weight.grad, c.weight.grad)
    assert int(a.sr_calls) == 1 and "sr_calls" in a.state_dict()
    # a resumed module continues the same random stream
    d, _, _, _ = run("nvfp4", sr_seed=5)
    e = ReferenceFP4Linear(K, N, "nvfp4", "l", bias=False, sr_seed=5)
    e.load_state_dict(d.state_dict())
    x = graded((M, K), 9).requires_grad_(True)
    d.weight.grad = None
    d(x).sum().backward()
    g1 = d.weight.grad.clone()
    e(x).sum().backward()
    assert torch.equal(g1, e.weight.grad)


def test_rne_backward_is_deterministic_without_sr():
    spec = {"name": "nvfp4", "stochastic_rounding": False}
    a, _, _, _ = run(spec, sr_seed=1)
    b, _, _, _ = run(spec, sr_seed=2)
    assert torch.equal(a.weight.grad, b.weight.grad)


def test_observer_gets_fp4_stats_for_input_weight_and_grad_output():
    mod = ReferenceFP4Linear(K, N, "nvfp4", "blk.fc")
    got = []
    mod.observer = lambda name, role, st: got.append((name, role, set(st)))
    x = torch.randn(M, K, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mod(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert [(n_, r) for n_, r, _ in got] == [("blk.fc", "input"), ("blk.fc", "weight"), ("blk.fc", "grad_output")]
    assert all(keys == set(FP4_KEYS) for _, _, keys in got)


def test_swap_shares_parameters_and_shapes_are_checked_first():
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 24))
    assert unsupported_linear(model, "nvfp4", ["0"]) is None  # the planner's one shape check
    why = unsupported_linear(model, "nvfp4", ["0", "2"])
    assert why.startswith("2 [24x64] cannot run nvfp4:") and "out_features=24" in why and "\n" not in why
    w = model[0].weight
    convert_to_fp4(model, "nvfp4", ["0"], sr_seed=1)
    assert isinstance(model[0], ReferenceFP4Linear) and model[0].weight is w
    assert model[0].to_linear().weight is w
    with pytest.raises(BadInput, match=r"l \[24x64\] cannot run mxfp4: .*divisible by its block 32"):
        ReferenceFP4Linear(64, 24, "mxfp4", "l")


def test_w4a4_forward_mismatch_is_larger_than_the_fp8_forward():
    # A generator-style forward: activations h [64, 256] (a few outlier channels, as in LLMs)
    # times an lm-head-like W [512, 256], log-probs compared with fp32.
    g = torch.Generator().manual_seed(0)
    h = torch.randn(64, 256, generator=g)
    h[:, :4] *= 20
    w = torch.randn(512, 256, generator=g) / 16
    lp = torch.log_softmax(h @ w.t(), -1)
    out = {}
    for name, fq in (("fp4", lambda t, role: fake_quantize_fp4(t, "nvfp4", role)),
                     ("fp8", lambda t, role: fake_quantize(t, "fp8_blockwise", role))):
        lq = torch.log_softmax(fq(h, "input") @ fq(w, "weight").t(), -1)
        out[name] = float((lq - lp).abs().mean())
    assert out["fp4"] > 4 * out["fp8"] > 0, out


@pytest.mark.parametrize("spec", ["nvfp4", {"name": "mxfp4", "mx_scale_rounding": "rceil"}])
def test_a_tiny_transformer_trains_with_fp4_linears(spec):
    from bench.models.decoder import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(d_model=64, n_layers=2, n_heads=2, d_ff=128, max_seq_len=32))
    names = [n_ for n_, m in model.named_modules() if isinstance(m, nn.Linear) and n_ != "lm_head"]
    convert_to_fp4(model, spec, names)
    assert sum(isinstance(m, ReferenceFP4Linear) for m in model.modules()) == len(names) == 14
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.randint(0, 128, (4, 17), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(6):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(idx[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 128), idx[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.2, losses


def test_1d_weights_are_requantized_along_n_for_dgrad():
    _, _, _, seen = run({"name": "nvfp4", "weight_2d": False})
    for gemm, shape in (("fprop", (N, K)), ("dgrad", (K, N))):
        t, q = seen[(gemm, "weight")]
        assert tuple(t.shape) == shape and q.tile == (1, 16)
        assert scale_constant_within(q, (1, 16)) and not scale_constant_within(q, (16, 1))
