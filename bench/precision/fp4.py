"""FP4 (E2M1) quantizers: `nvfp4` (Transformer Engine NVFP4) and `mxfp4` (OCP MX v1.0), DESIGN.md §5.

E2M1 is 1 sign, 2 exponent, 1 mantissa bit: magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 (max 6, no inf,
no NaN). Within a binade [2^k, 2^(k+1)) the grid step is 2^(k−1); below 1 (the subnormal 0.5) the
step is 0.5, the same as in [1, 2). So the step of |v| is 0.5 for |v| < 2, 1 on [2, 4), 2 on [4, 6],
and rounding to E2M1 is rounding |v|/step to an integer and multiplying back; both are exact in
fp32 because step is a power of two. Round-to-nearest-even is `torch.round` (ties to the even
integer, which is the even mantissa bit: 0.25→0, 0.75→1, 1.25→1, 1.75→2, 2.5→2, 3.5→4, 5→4).

A scale here is split into a per-block *decode* scale d and a per-tensor *global encode* scale g,
so that x̂ = q · d / g (mxfp4: g = 1, d = X). Every operand is 2-D [rows, K], K its GEMM's
reduction dim; blocks run along K and a caller whose GEMM reduces over the other dim transposes
first (as bench.precision.quantize does for FP8).

nvfp4 (TE NVFP4BlockScaling; the order of fp32 operations is the kernel's, see TE's
`compute_global_encode_scaling_factor_FP4` and `compute_decoding_scaling_factor` in its NVFP4
cast kernels and the PyTorch reference custom_recipes/quantization_ref_nvfp4.py):
  g = 448·6 / amax(tensor)   fp32 division; min(g, FLT_MAX) (a denormal amax); 1 if amax is 0 or
                             inf (TE's rule: amax == 0 or g == 0). A NaN amax also gives 1 here
                             (TE's fminf would give FLT_MAX; the NaN propagates either way)
  d = e4m3(clamp(block_amax · (g · (1/6)), ±448))   (1/6) and g·(1/6) rounded to fp32 first
                             (older TE releases computed (block_amax·(1/6))·g: it can differ in
                             the last bit); the cast is round-to-nearest-even onto E4M3; d is 0
                             when block_amax·g/6 < 2^-10: the whole block is *flushed*
                             (zero_block_frac)
  e = 1 / (d · (1/g))        min(e, FLT_MAX): a flushed block gets e = FLT_MAX and q = ±6, and
                             x̂ = q · 0 / g = 0, never NaN
  q = E2M1(clamp(x · e, ±6)) RNE, or stochastic rounding (gradients, `stochastic=True`)
  Tiles: 1x16 along K for inputs and gradients, 16x16 for weights (`weight_2d`, TE's default:
  a square tile is the same tile in W and Wᵀ, so forward and dgrad see one weight).
  The global amax may be passed in (`global_amax`: an amax reduced over ranks or a stale one);
  then block_amax·g/6 may exceed 448 and the decode scale saturates (scale_sat_frac; counted
  above 464, where the clamp changes the E4M3 value).
mxfp4 (OCP MX v1.0; TE has no MXFP4 recipe): 1x32 blocks along K for every role, E8M0 scale
  floor: X = 2^(floor(log2 block_amax) − 2)   (2 = emax of E2M1: 6 = 1.5·2^2). block_amax/X lies
         in [4, 8), so elements in (6, 8)·X are clamped to 6 by design, as in mxfp8; those in
         [7, 8)·X would have rounded to 8 and count as overflow_frac (fp4_stats)
  rceil: X = 2^ceil(log2(block_amax / 6))    the smallest power of two that fits, never saturates
  Exponent clamped to E8M0's −127..127; an all-zero (or non-finite) block gets X = 1.
  q = E2M1(clamp(x / X, ±6)), x̂ = q · X: both exact (X is a power of two).
Non-finite elements: E2M1 has neither inf nor NaN, so an inf or NaN element bypasses the clamp and
becomes NaN in q and x̂ (the GEMM output goes non-finite, as with E4M3 in quantize.py); a block
whose amax is non-finite gets the saturated decode scale 448 (nvfp4: inf·(g/6) clamps there) or
X = 1 (mxfp4), so its finite elements are still quantized; a non-finite tensor amax gives g = 1.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from bench.core.errors import BadInput

E2M1_MAX = 6.0
E2M1_OVERFLOW = 7.0  # max + half an ulp: with an unbounded exponent RNE would round |v| >= 7 to 8
E4M3_MAX = 448.0
E4M3_SAT = 464.0   # the rounding boundary above 448: larger values would round past it
NVFP4_BLOCK = 16
MXFP4_BLOCK = 32
FLT_MAX = torch.finfo(torch.float32).max
ROLES = ("input", "weight", "grad_output")
Tile = tuple[int, int]


# --- recipes -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FP4Recipe:
    """The FP4 training knobs. Block sizes are fixed by the formats (NVFP4 16, MX 32).

    nvfp4 defaults are TE's NVFP4BlockScaling: 16x16 weight tiles, RHT on the wgrad operands
    (xᵀ and dyᵀ, TE applies it to the columnwise copies only), stochastic rounding of the
    gradient (dy, for both backward GEMMs). mxfp4 defaults are plain OCP MX (no RHT, no SR):
    TE ships no MXFP4 recipe to follow; the switches are there to study it. The defaults live in
    FP4_DEFAULTS only: build recipes with get_fp4_recipe."""
    name: str                  # nvfp4 | mxfp4
    weight_2d: bool            # nvfp4 only: weights in 16x16 tiles (else 1x16 along K)
    rht: bool                  # 16-point random Hadamard transform on the wgrad operands
    stochastic_rounding: bool  # gradients (grad_output) rounded stochastically
    mx_scale_rounding: str     # mxfp4 only: floor (OCP v1.0) | rceil

    @property
    def block(self) -> int:
        return NVFP4_BLOCK if self.name == "nvfp4" else MXFP4_BLOCK

    def __post_init__(self):
        if self.name not in FP4_DEFAULTS:
            raise BadInput(f"unknown FP4 recipe {self.name!r}; valid: {', '.join(FP4_DEFAULTS)}")
        if self.mx_scale_rounding not in ("floor", "rceil"):
            raise BadInput(f"precision.mx_scale_rounding={self.mx_scale_rounding!r} for {self.name}; "
                           f"valid: floor, rceil")
        if self.name == "mxfp4" and self.weight_2d:
            raise BadInput("precision.weight_2d=true for mxfp4; valid: false (MX blocks are 1x32 along K "
                           "for every role)")


FP4_DEFAULTS = {
    "nvfp4": dict(weight_2d=True, rht=True, stochastic_rounding=True, mx_scale_rounding="floor"),  # unused
    "mxfp4": dict(weight_2d=False, rht=False, stochastic_rounding=False, mx_scale_rounding="floor"),
}
_KNOBS = {f.name: f.type for f in dataclasses.fields(FP4Recipe) if f.name != "name"}


def get_fp4_recipe(spec) -> FP4Recipe:
    """An FP4Recipe from a name, an FP4Recipe, or a mapping (a Hydra precision config): `name`
    picks the defaults, the recipe's own keys override them, other keys (engine,
    keep_high_precision, ...) are ignored. Bad values raise BadInput naming the valid choices."""
    if isinstance(spec, FP4Recipe):
        return spec
    if isinstance(spec, str):
        name, over = spec, {}
    elif isinstance(spec, Mapping):
        name = spec.get("name")
        over = {k: spec[k] for k in spec if k in _KNOBS}
    else:
        raise BadInput(f"FP4 recipe must be a name or a mapping, got {type(spec).__name__}; "
                       f"valid names: {', '.join(FP4_DEFAULTS)}")
    if name not in FP4_DEFAULTS:
        raise BadInput(f"unknown FP4 recipe {name!r}; valid: {', '.join(FP4_DEFAULTS)}")
    for k, v in over.items():
        if _KNOBS[k] == "bool" and not isinstance(v, bool):
            raise BadInput(f"precision.{k}={v!r} for {name}; valid: true, false")
    return FP4Recipe(name, **{**FP4_DEFAULTS[name], **over})


def fp4_tile(recipe: FP4Recipe, role: str) -> Tile:
    """Tile (rows, cols) sharing one block scale for an operand [rows, K] in this role."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
    b = recipe.block
    return (b, b) if (role == "weight" and recipe.weight_2d) else (1, b)


def fp4_shape_error(recipe, role: str, shape) -> str | None:
    """Why an operand of this shape cannot be quantized in this role, or None. The hardware
    block-scaled GEMMs have no partial blocks: K must be a multiple of the block, and the rows
    too for 16x16 weight tiles."""
    r = get_fp4_recipe(recipe)
    if len(shape) != 2:
        return f"{r.name} quantizes 2-D [rows, K] operands, got shape {tuple(shape)}"
    tr, tc = fp4_tile(r, role)
    rows, k = shape
    if k % tc or rows % tr:
        return (f"{r.name} {role} tiles are {tr}x{tc}: shape {tuple(shape)} needs "
                + ("K" if tr == 1 else "both dims") + f" divisible by {tc}")
    return None


def validate_fp4_linear(recipe, out_features: int, in_features: int) -> str | None:
    """Why a Linear [out_features, in_features] cannot run this FP4 recipe, or None (the analogue
    of recipes.validate_shape). Each dim is the reduction dim of some GEMM (K: forward, N: dgrad),
    so both must be multiples of the block; the token dim M is zero-padded by the linear."""
    r = get_fp4_recipe(recipe)
    bad = [f"{n}={v}" for n, v in (("in_features", in_features), ("out_features", out_features)) if v % r.block]
    if bad:
        return f"{r.name} needs in_features and out_features divisible by its block {r.block} ({', '.join(bad)})"
    return None


# --- E2M1 rounding -------------------------------------------------------------------------
def _e2m1_step(m: torch.Tensor) -> torch.Tensor:
    """Grid step at magnitude m (module docstring): 0.5 below 2, 1 on [2, 4), 2 from 4 on (as
    arithmetic on the comparisons: twice as fast as nested torch.where on CPU; NaN gets 0.5)."""
    return (m >= 2).to(m.dtype) * 0.5 + (m >= 4).to(m.dtype) + 0.5


def round_e2m1(v: torch.Tensor) -> torch.Tensor:
    """Round-to-nearest-even onto E2M1, v already clamped to ±6, as fp32 values. Sign kept
    (−0.1 → −0.0); NaN stays NaN. |v|/step and the product back are exact (step = 2^k), so the only
    rounding is torch.round's, which breaks ties to the even integer = the even mantissa bit."""
    m = v.abs()
    step = _e2m1_step(m)
    return torch.copysign(torch.round(m / step) * step, v)


def round_e2m1_stochastic(v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stochastic rounding onto E2M1 (v clamped to ±6): |v| between grid neighbours lo < hi goes
    up with probability (|v| − lo) / (hi − lo), so E[SR(v)] = v exactly on [−6, 6] (the clamp
    before it is the only bias). lo = floor(|v|/step)·step with the step of |v|; at |v| = 2 or 4 the
    step of the binade above applies, which is the gap to the next value up. Uniforms are fp32
    multiples of 2^-24, so the up-probability is exact to 2^-24 (the hardware's stochastic-rounding
    convert, which TE uses, takes its probabilities from a few random bits per element, so its
    draws differ from these; its expectation is x up to that resolution). One uniform per element, drawn
    from `generator`."""
    m = v.abs()
    step = _e2m1_step(m)
    t = m / step
    lo = torch.floor(t)
    u = torch.rand(v.shape, generator=generator, device=v.device, dtype=torch.float32)
    r = (lo + (u < (t - lo)).to(m.dtype)) * step
    return torch.copysign(torch.where(torch.isnan(v), v, r), v)


# --- the quantized tensor ------------------------------------------------------------------
@dataclass
class FP4Quantized:
    """x ≈ dequantize() = q · d / g, d expanded over its tiles."""
    q: torch.Tensor           # E2M1 values as fp32, x's shape (NaN where x was non-finite)
    decode: torch.Tensor      # fp32 block decode scales d (nvfp4: E4M3 values; mxfp4: X), [rows/tr, K/tc]
    encode: torch.Tensor      # fp32 block encode scales e (q = E2M1(x·e)), same layout as decode
    global_encode: torch.Tensor  # fp32 scalar g (mxfp4: 1)
    saturated: torch.Tensor   # bool per block: decode scale clamped (nvfp4 at 448; mxfp4 E8M0 range)
    tile: Tile
    recipe: str

    def expand(self, s: torch.Tensor) -> torch.Tensor:
        """A compact per-block tensor spread over the elements (x's shape)."""
        tr, tc = self.tile
        return s.repeat_interleave(tr, 0).repeat_interleave(tc, 1)

    def dequantize(self) -> torch.Tensor:
        """x̂ = (q · d) / g in fp32: q·d is exact (2 × 4 significant bits), the division by g is the
        one rounding (none for mxfp4, g = 1)."""
        return (self.q * self.expand(self.decode)) / self.global_encode


def block_amax(x: torch.Tensor, tile: Tile) -> torch.Tensor:
    """max |x| per tile, compact layout (x's dims are multiples of the tile); NaN propagates."""
    rows, cols = x.shape
    tr, tc = tile
    return x.abs().view(rows // tr, tr, cols // tc, tc).amax(dim=(1, 3))


def nvfp4_global_encode(amax: torch.Tensor) -> torch.Tensor:
    """g = 448·6 / amax as an fp32 tensor / tensor division (correctly rounded; `scalar / tensor`
    would be scalar · reciprocal, two roundings), capped at FLT_MAX, 1 for amax 0 / inf / NaN."""
    a = amax.float()
    g = torch.minimum(torch.full_like(a, E4M3_MAX * E2M1_MAX) / a, torch.full_like(a, FLT_MAX))
    return torch.where((a > 0) & torch.isfinite(a), g, torch.ones_like(a))


def nvfp4_scales(bamax: torch.Tensor, g: torch.Tensor):
    """(d, e, saturated) per block from the block amaxes and g, in TE's fp32 order."""
    inv6 = torch.ones((), dtype=torch.float32, device=g.device) / E2M1_MAX  # fl32(1/6)
    raw = bamax.float() * (g * inv6)
    # Saturated = the clamp changed d. Values in (448, 464] round to 448 in E4M3 anyway (464 is
    # the midpoint to the next step, 480, and ties go to 448's even mantissa), and the tensor's
    # own amax lands an fp32 ulp or two above 448 through the roundings of g and g·(1/6): that is
    # not saturation. Above 464 the block's true decode scale does not fit E4M3.
    saturated = raw > E4M3_SAT
    raw = torch.where(torch.isfinite(bamax), raw, torch.full_like(raw, E4M3_MAX))
    d = raw.clamp(max=E4M3_MAX).to(torch.float8_e4m3fn).float()
    e = torch.ones_like(d) / (d * (torch.ones_like(g) / g))
    return d, torch.minimum(e, torch.full_like(e, FLT_MAX)), saturated


def mxfp4_scales(bamax: torch.Tensor, rounding: str):
    """(X, 1/X, saturated) per block, from frexp exponents exactly (bamax = m·2^E, m in [0.5, 1)):
      floor:  floor(log2 bamax) − 2 = E − 3
      rceil:  ceil(log2(bamax/6)) = E − 3 + [m > 0.75]   (6 = 0.75·2^3; m/0.75 in [2/3, 4/3))
    `saturated`: the exponent hit E8M0's ±127 limit."""
    a = bamax.float()
    m, ex = torch.frexp(a)
    x_exp = ex - 3
    if rounding == "rceil":
        x_exp = x_exp + (m > 0.75).to(ex.dtype)
    ok = (a > 0) & torch.isfinite(a)
    saturated = ok & ((x_exp < -127) | (x_exp > 127))
    x_exp = torch.where(ok, x_exp.clamp(-127, 127), torch.zeros_like(x_exp))
    one = torch.ones_like(a)
    return torch.ldexp(one, x_exp), torch.ldexp(one, -x_exp), saturated


def quantize_fp4(x: torch.Tensor, recipe="nvfp4", role: str = "input", *, stochastic: bool = False,
                 generator: torch.Generator | None = None, global_amax: torch.Tensor | None = None
                 ) -> FP4Quantized:
    """Quantize x [rows, K] (K = the GEMM reduction dim) for this role, arithmetic in fp32.
    `stochastic` rounds the elements stochastically (drawn from `generator`); `global_amax`
    (nvfp4) replaces the tensor's own amax in g. Shapes that are not whole tiles raise BadInput."""
    r = get_fp4_recipe(recipe)
    if (why := fp4_shape_error(r, role, tuple(x.shape))):
        raise BadInput(why)
    tile = fp4_tile(r, role)
    xf = x.detach().float()
    bamax = block_amax(xf, tile)
    if r.name == "nvfp4":
        g = nvfp4_global_encode(xf.abs().amax() if global_amax is None else global_amax.detach().float())
        d, e, sat = nvfp4_scales(bamax, g)
    else:
        d, e, sat = mxfp4_scales(bamax, r.mx_scale_rounding)
        g = torch.ones((), dtype=torch.float32, device=xf.device)
    qin = FP4Quantized(xf, d, e, g, sat, tile, r.name)
    v = (xf * qin.expand(e)).clamp(-E2M1_MAX, E2M1_MAX)
    q = round_e2m1_stochastic(v, generator) if stochastic else round_e2m1(v)
    q = q.masked_fill(xf.isinf(), float("nan"))  # no inf in E2M1 (NaN is NaN already): NaN
    qin.q = q
    return qin


def fake_quantize_fp4(x: torch.Tensor, recipe="nvfp4", role: str = "input") -> torch.Tensor:
    """DESIGN.md §10 `fake_quantize` for the FP4 recipes: the dequantized x̂ (fp32) the recipe's
    GEMM would consume for x [rows, K] in this role, with the tensor's own global scale, round to
    nearest even, no Hadamard transform, no stochastic rounding."""
    return quantize_fp4(x, recipe, role).dequantize()
