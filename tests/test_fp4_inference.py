"""The generator's FP4 linear (W4A4 and W4A16) against the float64 reference quantizer, and its
log-prob mismatch against the FP8 generator linear on the same batch."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import fp4_reference as ref
from bench.core.errors import BadInput
from bench.precision.linears.inference import InferenceLinear as FP8InferenceLinear
from bench.precision.linears.inference import InferenceLinear as FP4InferenceLinear


def batch(seed=0):
    """Hidden states with a few outlier channels (as in LLM activations) and an lm-head-like W."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2, 32, 256, generator=g)
    h[..., :4] *= 20
    return h, nn.Linear(256, 512, bias=False).requires_grad_(False)


@pytest.mark.parametrize("weights_only", [False, True])
@pytest.mark.parametrize("spec,wtile", [("nvfp4", (16, 16)), ({"name": "nvfp4", "weight_2d": False}, (1, 16))])
def test_w4a4_and_w4a16_match_the_reference_quantizer(spec, wtile, weights_only):
    h, lin = batch()
    mod = FP4InferenceLinear.from_linear(lin, spec, "lm", weights_only=weights_only)
    W, H = lin.weight.double().numpy(), h.reshape(-1, 256).double().numpy()
    xh = H if weights_only else ref.ref_nvfp4(H, (1, 16))["xhat"]
    exp = xh @ ref.ref_nvfp4(W, wtile)["xhat"].T
    got = mod(h).reshape(-1, 512).double().numpy()
    np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-5 * np.abs(exp).max())
    assert mod.weight_loads == 1


def test_generator_w4a4_mismatch_is_larger_than_w4a16_and_than_the_fp8_generator():
    h, lin = batch(1)
    lp = torch.log_softmax(lin(h), -1)
    err = {}
    for name, mod in (("w4a4", FP4InferenceLinear.from_linear(lin, "nvfp4")),
                      ("w4a16", FP4InferenceLinear.from_linear(lin, "nvfp4", weights_only=True)),
                      ("fp8", FP8InferenceLinear.from_linear(lin, "fp8_blockwise"))):
        err[name] = float((torch.log_softmax(mod(h), -1) - lp).abs().mean())
    assert err["w4a4"] > err["w4a16"] > err["fp8"] > 0, err
    assert err["w4a4"] > 4 * err["fp8"], err


def test_a_biased_linear_keeps_its_bias_in_the_fp4_generator():
    """Qwen2's q/k/v projections carry biases: the generator keeps them in high precision and
    adds them to the quantized GEMM's output (a refit copies the buffer)."""
    import torch.nn as nn

    torch.manual_seed(0)
    lin = nn.Linear(32, 16, bias=True)
    plain = nn.Linear(32, 16, bias=False)
    plain.weight.data.copy_(lin.weight.data)
    x = torch.randn(4, 32)
    with_bias = FP4InferenceLinear.from_linear(lin, "nvfp4")(x)
    without = FP4InferenceLinear.from_linear(plain, "nvfp4")(x)
    assert torch.equal(with_bias, without + lin.bias.detach().float())
    assert "bias" in FP4InferenceLinear.from_linear(lin, "nvfp4").state_dict()
