"""The MFU convention the throughput benchmark reports (bench/benchmarks/throughput.py's docstring
derives it): PaLM's model FLOPs per token over the device's dense peak.

    flops_per_token = 6*N + 12*n_layers*d_model*seq_len      N = matmul_params(cfg)
    mfu             = tokens_per_s * flops_per_token / peak
"""
from __future__ import annotations

H100_SXM, H100_PCIE = (989.4, 1978.9), (756.0, 1513.0)  # dense bf16, fp8 TFLOP/s


def peak_tflops(device_name: str) -> tuple[float, float] | None:
    """(bf16, fp8) dense peak TFLOP/s for a device name, or None where the table has no entry."""
    n = device_name.upper()
    if not n.startswith("NVIDIA") or any(s in n for s in ("MIG", "NVL", "GH200")):
        return None  # a MIG slice has a fraction of the peak; NVL / GH200 run other clocks
    if "H200" in n:
        return H100_SXM
    if "H100" in n:
        return H100_PCIE if "PCIE" in n else H100_SXM
    return None


def matmul_params(cfg) -> int:
    """N of the MFU formula: weights of the Linears (attention, MLP, lm_head). q and o are d x d;
    k and v are d x (n_kv_heads * head_dim), which is d x d without grouped-query attention."""
    d = cfg.d_model
    kv = (getattr(cfg, "n_kv_heads", 0) or cfg.n_heads) * (d // cfg.n_heads)  # a bare bench.models.decoder config: no GQA
    return cfg.n_layers * (2 * d * d + 2 * d * kv + 3 * d * cfg.d_ff) + d * cfg.vocab_size


def flops_per_token(cfg, seq_len: int) -> int:
    """Training FLOPs per token, PaLM appendix B: 6*N + 12*n_layers*d_model*seq_len."""
    return 6 * matmul_params(cfg) + 12 * cfg.n_layers * cfg.d_model * seq_len


def mfu(tokens_per_s: float | None, fpt: int, peak: float | None) -> float | None:
    return None if not (peak and tokens_per_s) else tokens_per_s * fpt / (peak * 1e12)
