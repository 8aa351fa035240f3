"""The precision planner (issue 11): one path for trainer and generator, visible fallbacks, the
engines quantizing the same activations, Transformer Engine's knob mapping and capability rules,
a new recipe reaching the generator through the registry alone, per-cast overflow counting."""
import dataclasses
import sys
import types

import pytest
import torch
import torch.nn as nn

from bench.core.errors import BadInput
from bench.models.decoder import ModelConfig, Transformer
from bench.precision import RECIPES, plan_precision, apply_precision, quantize
from bench.precision.formats.base import QUANTIZERS, register_quantizer
from bench.precision.formats.fp8 import Quantized
from bench.precision.recipes import SCALINGS, register_recipe
from bench.precision.engines import ENGINES, choose_engine
from bench.precision.formats import FORMATS
from bench.precision.te import te_recipe, te_unsupported

CFG = ModelConfig(vocab_size=128, d_model=128, n_layers=2, n_heads=4, d_ff=384, max_seq_len=48)


def test_trainer_and_generator_are_planned_by_the_same_function_and_registry():
    from bench.generation import Generator

    g = Generator(CFG, "fp8_rowwise", "cpu")
    plan, eng = plan_precision(Transformer(CFG), "fp8_rowwise", "cpu", side="generator")
    assert g.plan == plan and eng is ENGINES["inference"] and g.engine_name == "inference"
    trainer_plan, trainer_eng = plan_precision(Transformer(CFG), {"name": "fp8_rowwise", "engine": "reference"}, "cpu")
    assert trainer_plan.fp8_modules == plan.fp8_modules and trainer_eng is ENGINES["reference"]


@pytest.fixture
def registry_snapshot():
    """Undo registrations a test makes (the registries are module-level)."""
    recipes, scalings, quantizers = dict(RECIPES), list(SCALINGS), dict(QUANTIZERS)
    yield
    for d, old in ((RECIPES, recipes), (QUANTIZERS, quantizers)):
        d.clear()
        d.update(old)
    SCALINGS[:] = scalings


def test_a_recipe_added_to_the_registry_runs_in_the_generator_and_the_trainer(registry_snapshot):
    """Adding a recipe touches the registry and its quantizer only: a made-up per-tensor scaling
    with a power-of-two scale that maps amax into [64, 128), registered here, runs on both sides."""
    from bench.generation import Generator

    def quarter(x, recipe, role, history):
        fmt = FORMATS[recipe.format_for(role)]
        s = torch.ldexp(torch.ones(()), -torch.frexp(x.detach().float().abs().amax())[1] + 6)
        xs = (x.detach().float() * s).clamp(-fmt.max, fmt.max)
        return Quantized(xs.to(fmt.dtype), s, None, fmt, clamped=torch.zeros((), dtype=torch.long))

    register_recipe("fp8_quarter", "quarter", "e4m3", "e4m3")
    register_quantizer("quarter", quarter)
    torch.manual_seed(0)
    trainer = Transformer(CFG)
    g = Generator(CFG, "fp8_quarter", "cpu")
    g.refit(trainer)
    ro = g.generate(torch.randint(3, 100, (2, 5)), 4, seed=0)
    assert ro.response_mask.all() and torch.isfinite(ro.logprobs).all()
    w = trainer.layers[0].mlp.up.weight.detach()
    expect = quarter(w, RECIPES["fp8_quarter"], "weight", None).dequantize()
    assert torch.equal(g.quantized_modules()["layers.0.mlp.up"]._w.dequantize(), expect)
    plan, eng = plan_precision(trainer, {"name": "fp8_quarter", "engine": "auto"}, "cpu")
    assert eng is ENGINES["reference"]


def test_fallback_is_recorded_with_its_step_in_the_plan_summary():
    model = Transformer(CFG)
    plan, eng = plan_precision(model, {"name": "mxfp8", "engine": "reference"}, "cpu")
    apply_precision(model, plan, eng)
    n = len(plan.fp8_modules)
    assert plan.fallback(model, "layers.1.mlp.down", 7) and not plan.fallback(model, "layers.1.mlp.down", 8)
    assert type(model.layers[1].mlp.down) is nn.Linear
    s = plan.summary()
    assert s["fallbacks"] == [{"module": "layers.1.mlp.down", "step": 7}]
    assert (s["recipe"], s["engine"], s["fp8_modules"], s["kept_modules"]) == ("mxfp8", "reference", n - 1, ["lm_head"])
    assert "layers.1.mlp.down (fallback@7)" in plan.row()[3]


def test_torchao_and_reference_engines_quantize_the_same_activations_under_cpu_autocast():
    """torchao's Float8Linear asks is_autocast_enabled() about CUDA only; without the engine's
    cast it quantized the fp32 input (relative difference ~1.6e-2 to the reference engine)."""
    pytest.importorskip("torchao.float8")
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(256, 128, bias=False))
    models = {}
    for engine in ("reference", "torchao"):
        m = nn.Sequential(nn.Linear(256, 128, bias=False))
        m[0].weight.data.copy_(base[0].weight.data)
        plan, eng = plan_precision(m, {"name": "fp8_rowwise", "engine": engine}, "cpu")
        apply_precision(m, plan, eng)
        models[engine] = m
    x = torch.randn(64, 256) * torch.logspace(-2, 1, 256)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        yr, ya = models["reference"](x), models["torchao"](x)
    assert yr.dtype == ya.dtype == torch.bfloat16
    rel = float((yr.float() - ya.float()).norm() / yr.float().norm())
    assert rel < 2 ** -9  # bf16 output rounding at most; both engines cast the same bf16 values


# --- Transformer Engine: mapping and refusal, without TE or a GPU ---------------------------------
def R(**kw):
    return dataclasses.replace(RECIPES[kw.pop("name")], **kw)


@pytest.mark.parametrize("recipe,cap,cuda,match", [
    (R(name="fp8_delayed"), (8, 9), "12.4", None),
    (R(name="fp8_delayed"), (8, 0), "12.4", "compute capability 8.9"),
    (R(name="fp8_delayed", pow2_scales=True), (9, 0), "12.4", "pow2_scales=true"),
    (R(name="fp8_delayed", fast_accum=False), (9, 0), "12.4", "fast_accum=false"),
    (R(name="fp8_tensorwise", fwd_format="e5m2"), (9, 0), "12.4", "fwd_format=e5m2"),
    (R(name="fp8_tensorwise", fast_accum=False, pow2_scales=True), (9, 0), "12.4", None),
    (R(name="fp8_rowwise"), (10, 0), "12.9", "no rowwise scaling"),
    (R(name="fp8_blockwise"), (9, 0), "12.9", None),
    (R(name="fp8_blockwise"), (9, 0), "12.8", "CUDA 12.9"),
    (R(name="fp8_blockwise"), (8, 9), "12.9", "compute capability 9.0"),
    (R(name="fp8_blockwise", act_block=64), (9, 0), "12.9", "act_block=64"),
    (R(name="mxfp8"), (10, 0), "12.8", None),
    (R(name="mxfp8"), (9, 0), "12.8", "compute capability 10.0+, this GPU is 9.0"),
    (R(name="mxfp8", mx_scale_rounding="floor"), (10, 0), "12.8", "mx_scale_rounding=floor"),
    (R(name="mxfp8", mx_block=16), (10, 0), "12.8", "mx_block=16"),
    (R(name="mxfp8"), None, None, None),  # no device in question: the recipe alone
    (R(name="mxfp8", mx_scale_rounding="floor"), None, None, "mx_scale_rounding=floor"),
])
def test_te_runs_a_recipe_exactly_as_configured_or_refuses_in_one_line(recipe, cap, cuda, match):
    why = te_unsupported(recipe, cap, cuda)
    if match is None:
        assert why is None
    else:
        assert match in why and "\n" not in why


@pytest.fixture
def fake_te(monkeypatch):
    """A stand-in for transformer_engine.common.recipe that records constructor arguments."""
    mod = types.ModuleType("transformer_engine.common.recipe")

    class Rec:
        def __init__(self, **kw):
            self.kw = kw

    mod.Format = types.SimpleNamespace(HYBRID="HYBRID", E4M3="E4M3")
    for name in ("DelayedScaling", "Float8CurrentScaling", "Float8BlockScaling", "MXFP8BlockScaling",
                 "QParams", "MMParams"):
        setattr(mod, name, type(name, (Rec,), {}))
    common = types.ModuleType("transformer_engine.common")
    common.recipe = mod
    monkeypatch.setitem(sys.modules, "transformer_engine", types.ModuleType("transformer_engine"))
    monkeypatch.setitem(sys.modules, "transformer_engine.common", common)
    monkeypatch.setitem(sys.modules, "transformer_engine.common.recipe", mod)
    return mod


def test_te_recipe_maps_every_knob(fake_te):
    d = te_recipe(R(name="fp8_delayed", amax_history_len=7, amax_compute_algo="most_recent", margin=2))
    assert type(d).__name__ == "DelayedScaling"
    assert d.kw == {"fp8_format": "HYBRID", "amax_history_len": 7, "amax_compute_algo": "most_recent", "margin": 2}
    b = te_recipe(R(name="fp8_blockwise", eps=1e-6))  # fp32 scales: power_2_scale False on every role
    assert type(b).__name__ == "Float8BlockScaling" and b.kw == {"fp8_format": "E4M3"}
    for role in ("fp8_quant_fwd_inp", "fp8_quant_fwd_weight", "fp8_quant_bwd_grad"):
        assert getattr(b, role).kw == {"power_2_scale": False, "amax_epsilon": 1e-6}
    assert te_recipe(R(name="fp8_blockwise", pow2_scales=True)).fp8_quant_fwd_inp.kw["power_2_scale"] is True
    t = te_recipe(R(name="fp8_tensorwise", fast_accum=False))
    assert type(t).__name__ == "Float8CurrentScaling" and t.kw == {"fp8_format": "HYBRID"}
    assert t.fp8_gemm_fprop.kw == {"use_split_accumulator": True}
    m = te_recipe(R(name="mxfp8"))
    assert type(m).__name__ == "MXFP8BlockScaling" and m.kw == {"fp8_format": "E4M3"}


def test_auto_skips_te_where_it_cannot_run_the_recipe(monkeypatch):
    import bench.precision.te as te

    monkeypatch.setattr(ENGINES["te"], "unavailable", lambda device: None)  # as if TE imported on CUDA
    monkeypatch.setattr(te, "device_facts", lambda device: ((9, 0), "12.9"))
    cpu = torch.device("cpu")
    assert choose_engine("auto", RECIPES["fp8_blockwise"], cpu).name == "te"
    assert choose_engine("auto", RECIPES["mxfp8"], cpu).name == "reference"  # TE MXFP8 needs SM 10.0
    with pytest.raises(BadInput, match="precision.engine=te cannot run mxfp8 here: .*10.0.*; valid here: reference"):
        choose_engine("te", RECIPES["mxfp8"], cpu)


# --- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg,side,match", [
    ({"name": "fp8_rowwise", "engine": "inference"}, "trainer", "precision.engine='inference'; valid: auto, te, torchao, reference"),
    ({"name": "fp8_rowwise", "engine": "reference"}, "generator", "generator_precision.engine='reference'; valid: auto, inference"),
    ({"name": "fp8_rowwise", "weights_only": True}, "trainer", "weights_only=true is a generator setting"),
    ({"name": "int4"}, "generator", "unknown generator_precision 'int4'; valid: fp32, bf16, fp16, fp8_delayed"),
])
def test_bad_plans_are_one_line_naming_the_value_and_the_choices(cfg, side, match):
    with pytest.raises(BadInput, match=match):
        plan_precision(Transformer(CFG), cfg, "cpu", side=side)


# --- overflow counted on every cast ----------------------------------------------------------
def test_every_cast_counts_its_clamped_elements_excluding_nonfinite_ones():
    """float64 reference: count finite x with |x·s| > max, s the scale the cast used."""
    h_amax = 1.0
    x = torch.randn(8, 64, dtype=torch.float64) * 3
    x[0, 0], x[1, 1] = float("inf"), float("nan")
    x[2, 2] = 1e38  # finite, but x·s overflows fp32 to inf: still one clamped element
    r = RECIPES["fp8_delayed"]
    from bench.precision.formats.fp8_scales import AmaxHistory

    h = AmaxHistory(r.amax_history_len)
    h.update(torch.tensor(h_amax))
    q = quantize(x.float(), r, "input", history=h)
    s = 448.0 / h_amax
    finite = torch.isfinite(x)
    expect = int(((x.abs() * s > 448.0) & finite).sum())
    assert expect > 0 and int(q.clamped) == expect


def test_reference_linear_accumulates_counts_per_role_over_forward_and_backward():
    from bench.precision.linears.reference import ReferenceLinear as ReferenceFP8Linear

    torch.manual_seed(0)
    mod = ReferenceFP8Linear.from_linear(nn.Linear(64, 32, bias=False), "fp8_delayed", "l")
    mod.hist["input"].update(torch.tensor(1e-3))  # a stale history: the next input saturates
    x = torch.randn(16, 64, requires_grad=True)
    mod(x).sum().backward()
    counts = mod.pop_clamp_counts()
    assert set(counts) == {"input", "weight", "grad_output"}
    c, n = counts["input"]
    assert n == 16 * 64 and int(c) == int((x.detach().abs() * 448.0 / 1e-3 > 448.0).sum())
    assert mod.pop_clamp_counts() == {}  # reset after reading


def test_eval_forwards_are_not_counted_as_a_training_steps_casts():
    from bench.precision.linears.reference import ReferenceLinear as ReferenceFP8Linear

    mod = ReferenceFP8Linear.from_linear(nn.Linear(64, 32, bias=False), "fp8_delayed", "l")
    mod.hist["input"].update(torch.tensor(1e-3))
    with torch.no_grad():
        mod(torch.randn(16, 64))
    mod.eval()
    mod(torch.randn(16, 64))
    assert mod.pop_clamp_counts() == {}


@pytest.mark.parametrize("top,expect", [(1.0, 0), (float(torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))), 1),
                                        (1e38, 1)])  # x·s overflows fp32 to inf: clamped
def test_clamp_count_at_the_format_max_boundary(top, expect):
    """s = 448 from a history amax of 1: x = 1 lands exactly on max (not clamped), the next fp32
    above it lands above max (clamped): the count follows the fp32 product the cast computes."""
    from bench.precision.formats.fp8_scales import AmaxHistory

    r = RECIPES["fp8_delayed"]
    h = AmaxHistory(r.amax_history_len)
    h.update(torch.tensor(1.0))
    x = torch.tensor([[0.5, top, -0.25] + [0.0] * 13])
    q = quantize(x, r, "input", history=h)
    assert float(q.scale) == 448.0
    assert int(q.clamped) == expect == int(((x.double() * 448.0).abs() > 448.0).sum())
