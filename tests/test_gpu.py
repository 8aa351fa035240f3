"""GPU paths (run on a CUDA machine; skipped elsewhere): real FP8 GEMMs, torchao without
emulation, Transformer Engine, bf16 autocast on CUDA."""
import dataclasses

import pytest
import torch

from bench.precision import RECIPES, ReferenceLinear as ReferenceFP8Linear
from bench.precision.linears.gemm import scaled_gemm
from bench.precision.formats.base import quantize

pytestmark = pytest.mark.gpu
FP8_CAPABLE = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


@pytest.mark.skipif(not FP8_CAPABLE, reason="needs sm89+ for FP8 GEMMs")
def test_real_scaled_mm_matches_the_dequantized_product_on_cuda():
    a = quantize(torch.randn(256, 512, device="cuda"), "fp8_tensorwise", "input")
    b = quantize(torch.randn(128, 512, device="cuda"), "fp8_tensorwise", "weight")
    got = scaled_gemm(a, b)
    ref = a.dequantize().double() @ b.dequantize().double().t()
    assert float((got.double() - ref).norm() / ref.norm()) < 1e-5


@pytest.mark.parametrize("recipe", [n for n, r in RECIPES.items() if r.fwd_format != "e2m1"])  # FP8 linear only
def test_reference_linear_trains_on_cuda_under_bf16_autocast(recipe):
    lin = torch.nn.Linear(256, 128, bias=False, device="cuda")
    m = ReferenceFP8Linear.from_linear(lin, recipe, "l")
    x = torch.randn(64, 256, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    y.float().pow(2).mean().backward()
    assert torch.isfinite(lin.weight.grad).all() and torch.isfinite(x.grad).all()


@pytest.mark.skipif(not FP8_CAPABLE, reason="needs sm89+ for torchao FP8 without emulation")
@pytest.mark.parametrize("scaling", ["tensorwise", "rowwise"])
def test_torchao_without_emulation_agrees_with_reference(scaling):
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    torch.manual_seed(0)
    lin = torch.nn.Linear(512, 256, bias=False, device="cuda")
    ao = torch.nn.Sequential(torch.nn.Linear(512, 256, bias=False, device="cuda"))
    ao[0].weight.data.copy_(lin.weight.data)
    convert_to_float8_training(ao, config=dataclasses.replace(Float8LinearConfig.from_recipe_name(scaling), emulate=False))
    ref = ReferenceFP8Linear.from_linear(lin, f"fp8_{scaling}", "l")
    x = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ya, yr = ao(x), ref(x)
    assert float((ya.float() - yr.float()).norm() / yr.float().norm()) < 1e-2


def test_transformer_engine_runs_delayed_scaling_when_installed():
    pytest.importorskip("transformer_engine.pytorch")
    from bench.models.decoder import ModelConfig, Transformer
    from bench.precision import apply_precision, plan_precision

    m = Transformer(ModelConfig()).cuda()
    plan, eng = plan_precision(m, {"name": "fp8_delayed", "engine": "te", "keep_high_precision": {"patterns": ["lm_head"]}},
                               torch.device("cuda"))
    apply_precision(m, plan, eng)
    with torch.autocast("cuda", dtype=torch.bfloat16), eng.context(plan.recipe):
        out = m(torch.randint(0, 128, (16, 32), device="cuda"))
    out.float().mean().backward()
    assert torch.isfinite(out).all()


@pytest.mark.skipif(not FP8_CAPABLE, reason="needs sm89+ for FP8 GEMMs")
@pytest.mark.parametrize("recipe", ["fp8_tensorwise", "fp8_rowwise"])
def test_inference_linear_runs_the_shared_dispatcher_on_cuda(recipe):
    """W8A8 through the one scaled-GEMM dispatcher (real _scaled_mm on CUDA) against the float64
    product of the dequantized operands."""
    from bench.precision.linears.inference import InferenceLinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(512, 256, bias=False, device="cuda")
    mod = InferenceLinear.from_linear(lin, recipe)
    x = torch.randn(64, 512, device="cuda")
    with torch.no_grad():
        y = mod(x)
    ref = quantize(x, recipe, "input").dequantize().double() @ mod._w.dequantize().double().t()
    assert float((y.double() - ref).norm() / ref.norm()) < 1e-5


def test_auto_engine_uses_te_exactly_where_its_rules_allow():
    pytest.importorskip("transformer_engine.pytorch")
    from bench.precision.engines import choose_engine
    from bench.precision.te import te_unsupported

    dev = torch.device("cuda")
    cap = torch.cuda.get_device_capability()
    for name, r in RECIPES.items():
        allowed = te_unsupported(r, cap, torch.version.cuda) is None
        assert (choose_engine("auto", r, dev).name == "te") == allowed, name
