"""The 16-point random Hadamard transform (RHT) of Transformer Engine's NVFP4 recipe.

T = D · H16 / 4, with H16 the Sylvester Hadamard matrix (H1 = [1], H2n = [[Hn, Hn], [Hn, −Hn]],
entries ±1, H16·H16ᵀ = 16·I) and D = diag(signs) a fixed sign vector. Then
T·Tᵀ = D·H16·H16ᵀ·D / 16 = D·D = I: T is orthogonal, and its entries ±1/4 are exact in every float
format. A row vector is transformed block by block along its last dim: each 16-element block v
becomes v·T (TE's reference quantizer computes x.view(-1, 16) @ T).

Why it is free for a GEMM: applied to *both* operands along their common reduction dim, the
transform cancels, Σ over a block of (a·T)(b·T)ᵀ = a·T·Tᵀ·bᵀ = a·bᵀ. The intent (TE, and the
NVFP4 pretraining paper, arXiv 2509.25149): each output is a ±1/4-weighted sum of 16 inputs, so a
block's distribution becomes closer to Gaussian and an outlier's share of the block amax drops
from |outlier| to about |outlier|/4. Whether that lowers the error of one GEMM depends on the data:
the block scales already confine an outlier to its own block, and the transform spreads it over
the other 15 elements of the block. On synthetic Gaussian wgrad operands it changes the relative
error of dW little (0.134 -> 0.134) and with sparse ×30 element outliers or ×50 outlier tokens it
raises it (0.114 -> 0.164, 0.113 -> 0.140; 256 tokens, 128x128, 5 seeds): the paper's case for it
is training stability at scale, not single-GEMM error. TE applies it only to the wgrad operands
(xᵀ and dyᵀ, along the token dim M); the forward and dgrad GEMMs see plain operands.

The sign vector is TE's hard-coded one: transformer_engine/pytorch/tensor/nvfp4_tensor.py,
`get_wgrad_sign_vector`, lines 49–59 (the values on line 56) at NVIDIA/TransformerEngine commit
01634950ba17e76ef8c73ef36039ea4588ef50fb; TE's PyTorch reference quantizer
(transformer_engine/pytorch/custom_recipes/quantization_ref_nvfp4.py, `get_wgrad_sign_vector`)
holds the same vector. TE builds its matrix (`get_rht_matrix`, same file) as
(signs · I) @ H · (1/√16), i.e. T above. TE runs the transform in bf16 with fp32 accumulation
fused into the cast; here it is an fp32 matmul (the same up to summation order).
"""
from __future__ import annotations

import torch

RHT_SIZE = 16
TE_WGRAD_SIGNS = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)


def hadamard_matrix(n: int = RHT_SIZE) -> torch.Tensor:
    """Sylvester Hadamard matrix of size n (a power of two), entries ±1, fp32."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {n}")
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def rht_matrix(signs=TE_WGRAD_SIGNS) -> torch.Tensor:
    """T = diag(signs) · H / √n (fp32, entries ±1/4 for n = 16: exact)."""
    s = torch.tensor(signs, dtype=torch.float32)
    n = s.numel()
    return (s[:, None] * hadamard_matrix(n)) / (n ** 0.5)


def _blocks(x: torch.Tensor, n: int) -> torch.Tensor:
    if x.shape[-1] % n:
        raise ValueError(f"random Hadamard transform needs the last dim divisible by {n}, got shape {tuple(x.shape)}")
    return x.reshape(-1, n)


def rht(x: torch.Tensor, signs=TE_WGRAD_SIGNS) -> torch.Tensor:
    """Each 16-element block v of x's last dim -> v·T, in fp32 (x's shape)."""
    t = rht_matrix(signs).to(x.device)
    return (_blocks(x.float(), t.shape[0]) @ t).reshape(x.shape)


def rht_inverse(y: torch.Tensor, signs=TE_WGRAD_SIGNS) -> torch.Tensor:
    """The inverse transform, w -> w·Tᵀ (T is orthogonal)."""
    t = rht_matrix(signs).to(y.device)
    return (_blocks(y.float(), t.shape[0]) @ t.t()).reshape(y.shape)
