"""RMSNorm at vLLM's rounding points (bench/models/norms.py) against a direct numpy
reimplementation of each vLLM file's rounding points (peer_spec §1), and the per-row scale error
the switch now has. The reference imports nothing from bench: fp32 arithmetic in numpy, bf16
round-to-nearest-even by bit manipulation, the variance accumulated in float64 and rounded to
fp32 (vLLM sums in fp32 in a tree order of its own; summation order is the one thing a
reimplementation cannot copy, so agreement is asked of all but a 1e-3 fraction of elements,
each of them off by at most one bf16 ulp)."""
import numpy as np
import pytest
import torch

from bench.models.norms import NORM_KERNELS, engine_rms_norm

EPS = 1e-5


def bf16(a: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 (round to nearest, ties to even), returned as fp32 (finite inputs)."""
    b = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return (b & 0xFFFFFFFF).astype(np.uint32).view(np.float32)


def inv_rms(z: np.ndarray) -> np.ndarray:
    var = np.float32((z.astype(np.float64) ** 2).mean(-1, keepdims=True))
    return (np.float32(1.0) / np.sqrt(var + np.float32(EPS), dtype=np.float32)).astype(np.float32)


def reference(kernel: str, x: np.ndarray, w: np.ndarray, res: np.ndarray | None):
    """(out, new residual) with x, w, res already bf16 values held in fp32."""
    if kernel == "vllm_cuda":  # csrc/layernorm_kernels.cu: bf16 add, variance of the rounded sum
        z = x if res is None else bf16(x + res)
        return bf16(bf16(z * inv_rms(z)) * w), (None if res is None else z)
    z = x if res is None else (x + res).astype(np.float32)  # fp32 add, kept unrounded
    new_res = None if res is None else bf16(z)
    if kernel == "vllm_native":  # layernorm.py forward_native: normalize the unrounded sum, two roundings
        return bf16(bf16(z * inv_rms(z)) * w), new_res
    zn = z if res is None else new_res  # csrc/cpu/layernorm.cpp: variance of z, normalize the rounded one
    return bf16((zn * inv_rms(z)) * w), new_res


def rows(seed: int, n: int = 256, d: int = 1024, outlier: float = 30.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[:, 7] *= outlier  # an outlier channel, as LLM residual streams have
    return x.bfloat16()


def agree(got: torch.Tensor, want: np.ndarray) -> tuple[float, float]:
    """(fraction of elements that differ, largest difference in bf16 ulps of the reference)."""
    g = got.float().numpy()
    diff = g != want
    ulp = np.abs(want).astype(np.float32).view(np.uint32) & 0x7F800000
    ulp = ulp.view(np.float32) * np.float32(2.0 ** -7)
    worst = float((np.abs(g - want) / np.maximum(ulp, 1e-38)).max())
    return float(diff.mean()), worst


@pytest.mark.parametrize("kernel", NORM_KERNELS)
@pytest.mark.parametrize("fused", [False, True])
def test_engine_rms_norm_rounds_where_the_vllm_file_rounds(kernel, fused):
    x, res = rows(0), (rows(1) if fused else None)
    w = (1 + 0.1 * torch.randn(1024, generator=torch.Generator().manual_seed(2))).bfloat16()
    out, new_res = engine_rms_norm(x, w, EPS, torch.bfloat16, kernel, residual=res)
    want, want_res = reference(kernel, x.float().numpy(), w.float().numpy(), None if res is None else res.float().numpy())
    frac, worst = agree(out, want)
    assert out.dtype == torch.bfloat16 and frac < 1e-3 and worst <= 1.0
    if fused:
        assert new_res.dtype == torch.bfloat16 and np.array_equal(new_res.float().numpy(), want_res)
    else:
        assert new_res is None


@pytest.mark.parametrize("kernel,other", [("vllm_native", "vllm_cpu"), ("vllm_native", "vllm_cuda"),
                                          ("vllm_cuda", "vllm_cpu")])
def test_the_reference_tells_the_kernels_apart(kernel, other):
    """The agreement asked above is tight enough to fail a kernel checked against another's
    rounding points (fused: every pair differs in where it rounds)."""
    x, res = rows(0), rows(1)
    w = (1 + 0.1 * torch.randn(1024, generator=torch.Generator().manual_seed(2))).bfloat16()
    out, _ = engine_rms_norm(x, w, EPS, torch.bfloat16, kernel, residual=res)
    want, _ = reference(other, x.float().numpy(), w.float().numpy(), res.float().numpy())
    assert agree(out, want)[0] > 1e-2


def row_scale_error(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> float:
    """Mean over rows of |c − 1|, c the least-squares scale of a row against the float64 norm."""
    xd, wd = x.double(), w.double()
    ref = xd / torch.sqrt((xd ** 2).mean(-1, keepdim=True) + EPS) * wd
    c = (y.double() * ref).sum(-1) / (ref * ref).sum(-1)
    return float((c - 1).abs().mean())


def test_per_row_scale_error_is_vllms_not_an_all_bf16_reductions():
    """2048 x 1024 bf16 rows, outlier channel, unit gains: the switch's error is that of vLLM's
    rounding points (the reference's) and well below the all-bf16 reduction it replaced."""
    x, w = rows(3, n=2048), torch.ones(1024, dtype=torch.bfloat16)
    new = row_scale_error(engine_rms_norm(x, w, EPS, torch.bfloat16, "vllm_native")[0], x, w)
    ref = row_scale_error(torch.from_numpy(reference("vllm_native", x.float().numpy(), w.float().numpy(), None)[0]), x, w)
    xc = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)  # the old switch: everything in bf16
    old = row_scale_error(xc * w, x, w)
    assert abs(new - ref) <= 0.02 * ref
    assert new < 0.5 * old


@pytest.mark.parametrize("kernel", NORM_KERNELS)
def test_generator_models_norm_through_the_selected_kernel(kernel, monkeypatch):
    """install_kernels' norm_in_compute_dtype + norm_kernel reach the built-in decoder's fused
    add+norm (residual kept in bf16) and the HF adapter's norms."""
    from bench.generation.kernels import KernelConfig, install_kernels
    from bench.models.decoder import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig())
    install_kernels(model, KernelConfig(norm_in_compute_dtype=True, norm_kernel=kernel), torch.bfloat16, {}, False)
    norm = model.layers[1].attn_norm
    x, d = rows(4, n=8, d=128).float(), rows(5, n=8, d=128)
    h, res = norm.add_forward(x, d)
    want, want_res = engine_rms_norm(d, norm.weight, norm.eps, torch.bfloat16, kernel, residual=x)
    assert norm.norm_kernel == kernel and res.dtype == torch.bfloat16
    assert torch.equal(h, want) and torch.equal(res, want_res)
    trainer_h, trainer_res = Transformer(ModelConfig()).layers[1].attn_norm.add_forward(x, d)
    assert trainer_res.dtype == torch.float32 and torch.equal(trainer_res, x + d)


def test_hf_norms_take_the_selected_kernel():
    pytest.importorskip("transformers")
    from bench.generation.kernels import KernelConfig, install_kernels
    from bench.models.hf import HFCausalLM
    import dataclasses
    from bench.config.schema import ModelConfig as Full

    cfg = dataclasses.replace(Full(), kind="hf", arch="llama", n_layers=1)
    torch.manual_seed(0)
    model = HFCausalLM.build(cfg)
    install_kernels(model, KernelConfig(norm_in_compute_dtype=True, norm_kernel="vllm_cpu"), torch.bfloat16, {}, False)
    x = rows(6, n=4, d=cfg.d_model)
    got = model.norm(x)
    assert torch.equal(got, engine_rms_norm(x, model.norm.weight, model.norm.variance_epsilon, torch.bfloat16,
                                            "vllm_cpu")[0])
