"""An independent float64 implementation of the FP4 recipes of DESIGN.md §5, for the tests.

Imports nothing from bench. Grids are built from the format definitions (E2M1: the 8 magnitudes;
E4M3: (1 + m/8)·2^(e−7) for e = 1..15 and m·2^-9 subnormals, 448 the largest), rounding is
nearest with ties to the even mantissa bit (= the even index in the sorted grid), and every fp32
rounding the kernels perform is formed as f32(exact float64 value):
  * a product of two fp32 numbers is exact in float64 (24 + 24 bits), so f32(a·b) is one rounding;
  * a quotient of two fp32 numbers rounded to float64 and then to float32 is still correctly
    rounded: double rounding is innocuous for division when the wider format has at least
    2p + 2 bits (53 >= 2·24 + 2; Figueroa, "When is double rounding innocuous?", 1995).
"""
import math

import numpy as np

FLT_MAX = float(np.finfo(np.float32).max)
E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
E4M3 = np.array([(m / 8) * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
                 for e in range(16) for m in range(8)][:127])   # index = 8e + m; drop the NaN code


def f32(x):
    """Round float64 values to the nearest fp32 (ties to even), as float64; overflow gives inf."""
    with np.errstate(over="ignore"):
        return np.asarray(x, np.float64).astype(np.float32).astype(np.float64)


def round_to_grid(v, grid):
    """Nearest magnitude of the sorted non-negative grid, ties to the even index, sign kept; v
    must lie within ±grid[-1]. NaN stays NaN."""
    v = np.asarray(v, np.float64)
    m = np.abs(np.nan_to_num(v))
    dist = np.abs(m[..., None] - grid)
    cand = dist == dist.min(-1, keepdims=True)
    even = cand & (np.arange(len(grid)) % 2 == 0)
    idx = np.where(even.any(-1), np.argmax(even, -1), np.argmax(cand, -1))
    out = np.copysign(grid[idx], v)
    return np.where(np.isnan(v), np.nan, out)


def e2m1(v):
    return round_to_grid(v, E2M1)


def e4m3(v):
    return round_to_grid(v, E4M3)


def tiles(shape, tile):
    """Yield (row slice, col slice, block index) for every tile."""
    tr, tc = tile
    for i in range(shape[0] // tr):
        for j in range(shape[1] // tc):
            yield slice(i * tr, (i + 1) * tr), slice(j * tc, (j + 1) * tc), (i, j)


def ref_nvfp4(x, tile, global_amax=None):
    """DESIGN §5 nvfp4 on x (fp32 values as float64). Returns dict of q, d (per block), g, xhat,
    plus the per-block raw decode scale and the encode scales."""
    x = np.asarray(x, np.float64)
    fin = np.isfinite(x)
    amax = np.abs(x).max() if global_amax is None else float(global_amax)
    if amax > 0 and math.isfinite(amax):
        g = min(float(f32(2688.0 / amax)), FLT_MAX)
    else:
        g = 1.0
    mult = float(f32(g * float(f32(1.0 / 6.0))))
    nb = (x.shape[0] // tile[0], x.shape[1] // tile[1])
    d, raw, e = np.zeros(nb), np.zeros(nb), np.zeros(nb)
    for rs, cs, ij in tiles(x.shape, tile):
        bamax = np.abs(x[rs, cs]).max()
        r = min(float(f32(bamax * mult)), FLT_MAX) if math.isfinite(bamax) else 448.0
        raw[ij] = r
        d[ij] = float(e4m3(min(r, 448.0)))
        den = float(f32(d[ij] * float(f32(1.0 / g))))
        e[ij] = FLT_MAX if den == 0 else min(float(f32(1.0 / den)), FLT_MAX)
    D, E = np.kron(d, np.ones(tile)), np.kron(e, np.ones(tile))
    v = np.clip(f32(np.where(fin, x, 0.0) * E), -6.0, 6.0)
    q = np.where(fin, e2m1(v), np.nan)
    xhat = f32(f32(q * D) / g)
    return {"q": q, "d": d, "raw": raw, "e": e, "g": g, "xhat": xhat}


def _mx_exponent(amax, rounding):
    """floor: floor(log2 amax) − 2; rceil: the smallest k with amax <= 6·2^k. Exact comparisons."""
    if rounding == "floor":
        k = math.floor(math.log2(amax))
        while 2.0 ** k > amax:
            k -= 1
        while 2.0 ** (k + 1) <= amax:
            k += 1
        return k - 2
    k = math.ceil(math.log2(amax / 6.0))
    while amax > 6.0 * 2.0 ** k:
        k += 1
    while amax <= 6.0 * 2.0 ** (k - 1):
        k -= 1
    return k


def ref_mxfp4(x, rounding="floor", block=32):
    """DESIGN §5 mxfp4: X = 2^k per 1x32 block (k clamped to ±127; X = 1 for a zero block),
    q = RNE(clamp(x/X, ±6)), x̂ = q·X."""
    x = np.asarray(x, np.float64)
    nb = (x.shape[0], x.shape[1] // block)
    X, clamped = np.ones(nb), np.zeros(nb, bool)
    for rs, cs, ij in tiles(x.shape, (1, block)):
        a = np.abs(x[rs, cs]).max()
        if a > 0 and math.isfinite(a):
            k = _mx_exponent(a, rounding)
            clamped[ij] = not -127 <= k <= 127
            X[ij] = 2.0 ** max(-127, min(127, k))
    XX = np.kron(X, np.ones((1, block)))
    q = e2m1(np.clip(f32(x / XX), -6.0, 6.0))
    return {"q": q, "X": X, "clamped": clamped, "xhat": q * XX, "v": x / XX}


def hadamard_T():
    """TE's RHT matrix in float64: diag(TE signs) · H16 / 4, H16 = H2 ⊗ H2 ⊗ H2 ⊗ H2."""
    h2 = np.array([[1.0, 1.0], [1.0, -1.0]])
    h = np.kron(np.kron(h2, h2), np.kron(h2, h2))
    signs = np.array([1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1], np.float64)
    return signs[:, None] * h / 4.0
