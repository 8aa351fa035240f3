"""FP4 (E2M1) elements: the rounding, the quantized tensor, the quantizer frame and the format
interface that `nvfp4` (nvfp4.py) and `mxfp4` (mxfp4.py) share, DESIGN.md §5.

E2M1 is 1 sign, 2 exponent, 1 mantissa bit: magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 (max 6, no inf,
no NaN). Within a binade [2^k, 2^(k+1)) the grid step is 2^(k−1); below 1 (the subnormal 0.5) the
step is 0.5, the same as in [1, 2). So the step of |v| is 0.5 for |v| < 2, 1 on [2, 4), 2 on [4, 6],
and rounding to E2M1 is rounding |v|/step to an integer and multiplying back; both are exact in
fp32 because step is a power of two. Round-to-nearest-even is `torch.round` (ties to the even
integer, which is the even mantissa bit: 0.25→0, 0.75→1, 1.25→1, 1.75→2, 2.5→2, 3.5→4, 5→4).

A scale here is split into a per-block *decode* scale d and a per-tensor *global encode* scale g,
so that x̂ = q · d / g (mxfp4: g = 1, d = X). Every operand is 2-D [rows, K], K its GEMM's
reduction dim; blocks run along K and a caller whose GEMM reduces over the other dim transposes
first (as bench/precision/formats/fp8.py does for FP8).

The per-format scale formulas: nvfp4.py (TE NVFP4BlockScaling) and mxfp4.py (OCP MX v1.0).
Non-finite elements: E2M1 has neither inf nor NaN, so an inf or NaN element bypasses the clamp and
becomes NaN in q and x̂ (the GEMM output goes non-finite, as with E4M3 in fp8.py); a block
whose amax is non-finite gets the saturated decode scale 448 (nvfp4: inf·(g/6) clamps there) or
X = 1 (mxfp4), so its finite elements are still quantized; a non-finite tensor amax gives g = 1.

Stats of one cast (the format's terms of bench.precision.stats):
  scale            nvfp4: the global encode scale g; mxfp4: the smallest block multiplier 1/X
                   (the block with the largest amax, where resolution is coarsest)
  overflow_frac    finite elements whose clamp to ±6 changed their E2M1 value, / numel: |x·e| >= 7,
                   the IEEE overflow threshold (max 6 plus half the ulp 2 of its binade; 7 ties to
                   8's even mantissa), counted in blocks that are not flushed (a flushed block has
                   e = FLT_MAX by construction: its elements are lost to the flush, not to
                   saturation). Why not |x·e| > 6: the E4M3 rounding of d lands below
                   block_amax·g/6 in about half the nvfp4 blocks, putting the block's largest element
                   up to 6.25 % over 6, where it rounds to 6 anyway; counting it would report ~3 %
                   overflow on every tensor (over the monitor's 1e-3 event threshold) for a clamp
                   that changes nothing. Real overflow: a stale or passed global amax (nvfp4), the
                   top binade of mxfp4 floor ((7, 8)·X by design)
  underflow_frac   finite non-zero elements whose x̂ is 0 (q = 0, or a flushed block)
  scale_sat_frac   blocks whose decode scale was clamped: nvfp4 block_amax·(g·(1/6)) > 448 by more
                   than E4M3 rounding (> 464; only with a passed or stale global amax: the tensor's
                   own amax keeps it within an ulp of 448);
                   mxfp4 an E8M0 exponent outside ±127. / the number of blocks
  zero_block_frac  blocks holding a finite non-zero element whose x̂ is entirely 0, / the number of
                   such non-zero blocks. nvfp4: exactly the blocks whose E4M3 decode scale rounds to
                   0, block_amax < 2^-10 · amax/448: one outlier that sets g silently flushes every
                   block more than ~2^19 smaller. The monitor raises it as an `underflow` event
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.core.errors import BadInput
from bench.precision.formats.base import QuantFormat, Tile, register_format
from bench.precision.formats.hadamard import rht
from bench.precision.recipes import ROLES, ScalingRecipe

E2M1_MAX = 6.0
E2M1_OVERFLOW = 7.0  # max + half an ulp: with an unbounded exponent RNE would round |v| >= 7 to 8
FLT_MAX = torch.finfo(torch.float32).max
FP4_KEYS = ("amax", "scale", "overflow_frac", "underflow_frac", "scale_sat_frac", "zero_block_frac",
            "sqnr_db", "nonfinite")
GPU_REASON = ("FP4 GEMMs (Transformer Engine NVFP4, torchao MX-FP4) need a Blackwell GPU (compute capability "
              "10.0) and are not wired into this harness; the reference engine emulates them")


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
        return FP4_FORMATS[self.name].block

    def __post_init__(self):
        if self.name not in FP4_DEFAULTS:
            raise BadInput(f"unknown FP4 recipe {self.name!r}; valid: {', '.join(FP4_DEFAULTS)}")
        if self.mx_scale_rounding not in ("floor", "rceil"):
            raise BadInput(f"precision.mx_scale_rounding={self.mx_scale_rounding!r} for {self.name}; "
                           f"valid: floor, rceil")
        FP4_FORMATS[self.name].check_knobs(self)


FP4_FORMATS: dict = {}  # name -> its FP4Format (nvfp4.py, mxfp4.py: `register_fp4`)
FP4_DEFAULTS: dict[str, dict] = {}  # name -> the FP4Recipe knobs' defaults (each format's `defaults`)
_KNOBS = {f.name: f.type for f in dataclasses.fields(FP4Recipe) if f.name != "name"}


def get_fp4_recipe(spec) -> FP4Recipe:
    """An FP4Recipe from a name, an FP4Recipe, a registered FP4 ScalingRecipe (its FP4 knobs), or a
    mapping (a Hydra precision config): `name` picks the defaults, the recipe's own keys override
    them, other keys (engine, keep_high_precision, ...) are ignored. Bad values raise BadInput
    naming the valid choices."""
    if isinstance(spec, FP4Recipe):
        return spec
    if isinstance(spec, ScalingRecipe):
        return FP4Recipe(spec.scaling, weight_2d=spec.weight_2d, rht=spec.rht,
                         stochastic_rounding=spec.stochastic_rounding, mx_scale_rounding=spec.mx_scale_rounding)
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
    stat_keys = FP4_KEYS  # not a field

    def expand(self, s: torch.Tensor) -> torch.Tensor:
        """A compact per-block tensor spread over the elements (x's shape)."""
        tr, tc = self.tile
        return s.repeat_interleave(tr, 0).repeat_interleave(tc, 1)

    def dequantize(self) -> torch.Tensor:
        """x̂ = (q · d) / g in fp32: q·d is exact (2 × 4 significant bits), the division by g is the
        one rounding (none for mxfp4, g = 1)."""
        return (self.q * self.expand(self.decode)) / self.global_encode

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    def zeros(self, xhat: torch.Tensor) -> torch.Tensor:
        """Where x̂ is 0: q = 0, or a flushed block (bench.precision.stats: underflow_frac)."""
        return xhat == 0

    def stat_terms(self, xf: torch.Tensor, finite: torch.Tensor, nz: torch.Tensor, xhat: torch.Tensor,
                   fmt=None) -> dict:
        """The FP4 terms of bench.precision.stats (module docstring)."""
        nz_blocks = _per_block_any(nz, self.tile)
        kept_blocks = _per_block_any(nz & (xhat != 0), self.tile)
        flushed = nz_blocks & ~kept_blocks
        in_flushed = self.expand(flushed)
        over = finite & ~in_flushed & ((xf * self.expand(self.encode)).abs() >= E2M1_OVERFLOW)
        return {"scale": FP4_FORMATS[self.recipe].summary_scale(self).double(),
                "overflow_frac": over.sum().double() / max(xf.numel(), 1),
                "scale_sat_frac": self.saturated.sum().double() / max(self.saturated.numel(), 1),
                "zero_block_frac": flushed.sum().double() / nz_blocks.sum().clamp(min=1).double()}


def _per_block_any(mask: torch.Tensor, tile) -> torch.Tensor:
    rows, cols = mask.shape
    tr, tc = tile
    return mask.view(rows // tr, tr, cols // tc, tc).any(dim=3).any(dim=1)


def block_amax(x: torch.Tensor, tile: Tile) -> torch.Tensor:
    """max |x| per tile, compact layout (x's dims are multiples of the tile); NaN propagates."""
    rows, cols = x.shape
    tr, tc = tile
    return x.abs().view(rows // tr, tr, cols // tc, tc).amax(dim=(1, 3))


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
    d, e, sat, g = FP4_FORMATS[r.name].block_scales(xf, bamax, r, global_amax)
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


# --- the format interface (base.py), shared by nvfp4 and mxfp4 -----------------------------
class FP4Format(QuantFormat):
    """E2M1 elements in blocks of `block` along K. A subclass sets name, block, defaults (the
    FP4Recipe knobs) and implements block_scales and summary_scale (nvfp4.py, mxfp4.py)."""
    block = 16
    defaults: dict = {}
    recipe_fields: dict = {}  # extra ScalingRecipe fields recorded with the recipe (mxfp4: mx_block)
    stat_keys = FP4_KEYS
    inference_kind = ("W4A4", "W4A16")
    strict_shapes = True
    sr_stream = True
    keeps_codes = False
    gpu_reason = GPU_REASON

    def block_scales(self, xf, bamax, r: FP4Recipe, global_amax):
        """(d, e, saturated, g) per block from the block amaxes (module docstring)."""
        raise NotImplementedError

    def summary_scale(self, q: FP4Quantized) -> torch.Tensor:
        """The stats' `scale` of one cast."""
        raise NotImplementedError

    def check_knobs(self, r: FP4Recipe) -> None:
        """Raise BadInput for knob values this format refuses."""

    def check(self, recipe):
        get_fp4_recipe(recipe)

    def quantize(self, x, recipe, role, history=None, *, stochastic=False, generator=None):
        """Round to nearest even (or stochastically) with the tensor's own global scale: FP4
        recipes have no history."""
        return quantize_fp4(x, recipe, role, stochastic=stochastic, generator=generator)

    def tile(self, recipe, role, shape):
        return fp4_tile(get_fp4_recipe(recipe), role)

    def linear_error(self, recipe, out_features, in_features):
        return validate_fp4_linear(get_fp4_recipe(recipe), out_features, in_features)

    def stochastic(self, recipe, role):
        """Gradients (grad_output) round stochastically when the recipe asks."""
        return role == "grad_output" and recipe.stochastic_rounding

    def wgrad_operands(self, recipe, dyt, xt):
        """wgrad reduces over M (tokens): zero-pad M to a multiple of the block (zero tokens add
        nothing to dW, and a zero-padded block quantizes its real elements exactly as a partial
        block would), then the random Hadamard transform along M when `rht` is on."""
        dyt, xt = _pad_cols(dyt, self.block), _pad_cols(xt.detach().float(), self.block)
        return (rht(dyt), rht(xt)) if recipe.rht else (dyt, xt)


def _pad_cols(t: torch.Tensor, mult: int) -> torch.Tensor:
    return F.pad(t, (0, -t.shape[1] % mult))


def register_fp4(fmt: FP4Format) -> FP4Format:
    """Register an FP4 format and its recipe `fmt.name` (scaling = name, E2M1 elements)."""
    FP4_FORMATS[fmt.name], FP4_DEFAULTS[fmt.name] = fmt, dict(fmt.defaults)
    fields = {**fmt.defaults, **fmt.recipe_fields}
    return register_format(fmt, {fmt.name: dict(scaling=fmt.name, fwd_format="e2m1", grad_format="e2m1", **fields)})
