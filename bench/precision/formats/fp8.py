"""The FP8 format: the five FP8 scalings' quantizer, tiling and saturation (the numerics ground truth
of the project), and their implementation of the format interface (base.py). The scale formulas
and the element formats are in fp8_scales.py.

Convention (DESIGN.md §5): a scale s *multiplies*, q = cast(clamp(x·s, −max, max)), x̂ = q / s.
Operands are 2-D [rows, K] with K the GEMM's reduction dim; tiles always run along K, and a
caller whose GEMM reduces over the other dim transposes first. A scale must be constant along
the reduction dim *within a tile*, so that the GEMM can pull 1/s out of each partial dot product.

Granularity (the compact `Quantized.scale` layout in brackets):
  delayed, tensorwise  one scale for the tensor                                        []
  rowwise              one scale per row                                               [rows, 1]
  blockwise            input/grad_output: 1 x act_block tiles along K                  [rows, n_tiles]
                       weight: weight_block x weight_block blocks              [row_blocks, col_blocks]
  mx                   1 x mx_block along K for every role, power of two (E8M0)        [rows, n_tiles]
Partial tiles are allowed: when K (or rows, for weight blocks) is not a multiple of the tile,
the last tile is smaller and its scale comes from the elements it has.

Why clamp before the cast: E4M3fn has no infinity and an out-of-range cast must not be left to
the cast's own behaviour (NaN in some torch versions, saturation in others). Saturation is also
what "overflow" means in the stats: an element with |x·s| > max is clipped to ±max.

Non-finite inputs propagate honestly. amax is taken over all elements, so a tile holding inf or
NaN has a non-finite amax; the formula would give s = max/inf = 0 (x̂ = 0/0 = NaN everywhere) or
s = NaN. Guard: such a tile gets s = 1 (Transformer Engine's value for an inf amax; delayed
scaling keeps its previous scale instead), its finite elements are quantized with s = 1, and its
non-finite elements bypass the clamp: NaN stays NaN, ±inf stays ±inf in E5M2 and becomes NaN in
E4M3 (no inf there). So x̂ is non-finite exactly where x was, the GEMM output goes non-finite, and
the stats count the elements (`nonfinite`) instead of hiding them as saturated ±max.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.precision.formats.base import QuantFormat, Tile, register_format, DEFAULT_FORMAT
from bench.precision.formats.fp8_scales import (FORMATS, AmaxHistory, Float8Format, current_scale, delayed_scale,
                                                mx_scale, pow2_floor)
from bench.precision.recipes import ROLES, ScalingRecipe


@dataclass
class Quantized:
    """One quantized tensor: x ≈ data / scale_full()."""
    data: torch.Tensor          # fp8, same shape as the input
    scale: torch.Tensor         # fp32 multipliers, compact layout (module docstring)
    tile: Tile | None           # tile shape each compact scale covers; None = whole tensor
    fmt: Float8Format
    # Elements clipped to ±max (finite x with |x·s| > max): a 0-d device tensor, so that counting
    # every cast costs no host sync (the trainer reads all counts once per step). None where the
    # producer did not count (a Quantized rebuilt from saved data).
    clamped: torch.Tensor | None = None
    stat_keys = ("amax", "scale", "overflow_frac", "underflow_frac", "sqnr_db", "nonfinite")  # not a field

    def scale_full(self) -> torch.Tensor:
        """The scale of every element, x's shape (a broadcast view for per-tensor scales)."""
        if self.tile is None:
            return self.scale.expand(self.data.shape)
        return _expand(self.scale, self.tile, self.data.shape)

    def dequantize(self) -> torch.Tensor:
        """x̂ = q / s in fp32 (an fp32 division: exact for power-of-two scales)."""
        return self.data.float() / self.scale_full()

    def t(self) -> "Quantized":
        """The same quantization of xᵀ (the data and the scale layout transposed). It is only a
        valid operand for a GEMM reducing over xᵀ's last dim when every tile spans that dim with one
        scale: per-tensor scales, or square blocks."""
        scale = self.scale if self.tile is None else self.scale.t().contiguous()
        tile = None if self.tile is None else (self.tile[1], self.tile[0])
        return Quantized(self.data.t().contiguous(), scale, tile, self.fmt)

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def zeros(self, xhat: torch.Tensor) -> torch.Tensor:
        """Where the cast gave 0 (the FP8 value itself, bench.precision.stats: underflow_frac)."""
        return self.data.float() == 0

    def stat_terms(self, xf: torch.Tensor, finite: torch.Tensor, nz: torch.Tensor, xhat: torch.Tensor,
                   fmt: Float8Format | None = None) -> dict:
        """The FP8 part of bench.precision.stats: `scale` the smallest tile scale (the tile with the
        largest amax, where resolution is coarsest and overflow starts: a median would hide the
        outlier tile), `overflow_frac` the finite elements with |x·s| > max before the clamp."""
        fmt = fmt or self.fmt
        s = self.scale_full()
        return {"scale": self.scale.double().min(),
                "overflow_frac": (finite & ((xf * s).abs() > fmt.max)).sum().double() / max(xf.numel(), 1)}


def _expand(s: torch.Tensor, tile: Tile, shape) -> torch.Tensor:
    """Compact tile scales [n_row_tiles, n_col_tiles] -> one per element (a partial edge tile
    just gets cut off)."""
    rows, cols = shape
    tr, tc = tile
    nr, nc = s.shape
    return s[:, None, :, None].expand(nr, tr, nc, tc).reshape(nr * tr, nc * tc)[:rows, :cols]


def tile_shape(recipe: ScalingRecipe, role: str, shape) -> Tile | None:
    """Tile (rows, cols) sharing one scale for an operand [rows, K] of this role; None = whole
    tensor."""
    _, k = shape
    if recipe.per_tensor:
        return None
    if recipe.scaling == "rowwise":
        return (1, k)
    if recipe.scaling == "blockwise":
        b = recipe.weight_block
        return (b, b) if role == "weight" else (1, recipe.act_block)
    return (1, recipe.mx_block)


def tile_amax(x: torch.Tensor, tile: Tile | None) -> torch.Tensor:
    """max |x| per tile, compact layout. Edge tiles are zero-padded: |x| >= 0, so padding never
    raises an amax; NaN propagates (torch.amax does), inf gives inf."""
    if tile is None:
        return x.abs().amax()
    rows, cols = x.shape
    tr, tc = tile
    pr, pc = -rows % tr, -cols % tc
    xp = torch.nn.functional.pad(x.abs(), (0, pc, 0, pr))
    return xp.view((rows + pr) // tr, tr, (cols + pc) // tc, tc).amax(dim=(1, 3))


def scale_for(x: torch.Tensor, recipe: ScalingRecipe, role: str, history: AmaxHistory | None = None
              ) -> tuple[torch.Tensor, Tile | None]:
    """The compact fp32 scale and its tile for quantizing x [rows, K] in this role. Reads but
    never writes `history`; no host synchronisation."""
    s, tile, _ = _scale_and_amax(x, recipe, role, history)
    return s, tile


def _scale_and_amax(x: torch.Tensor, recipe: ScalingRecipe, role: str, history: AmaxHistory | None):
    """scale_for, plus the tile amaxes it computed on the way (compact layout, like the scale)."""
    fmt = FORMATS[recipe.format_for(role)]
    tile = tile_shape(recipe, role, tuple(x.shape))
    amax = tile_amax(x, tile)
    if recipe.scaling == "delayed":
        if history is None:  # a first step: the (virtually seeded) history holds only this amax
            s = delayed_scale(amax, fmt, recipe.margin, recipe.eps, 1.0)
        else:
            chosen = torch.where(history.count == 0, amax.float(), history.chosen_amax())
            s = history.scale_from(chosen, fmt, recipe.eps)
        return (pow2_floor(s) if recipe.pow2_scales else s), None, amax
    if recipe.scaling == "mx":
        return mx_scale(amax, fmt, recipe.mx_scale_rounding), tile, amax
    return current_scale(amax, fmt, recipe), tile, amax


def can_clamp(recipe: ScalingRecipe) -> bool:
    """Whether a cast with this recipe can clip finite elements whose tile amax is finite.
    Current scaling (tensorwise, rowwise, blockwise) takes s from the tile's own amax rounded so
    that amax·s <= max exactly (max_over, pow2_floor round down), and fl(|x|·s) <= fl(amax·s) by
    monotonic rounding, so nothing clips; MX rceil picks X >= amax / max, likewise. Delayed
    scaling (a stale history) and MX floor (amax lands in [256, 512)) can clip."""
    return recipe.scaling == "delayed" or (recipe.scaling == "mx" and recipe.mx_scale_rounding == "floor")


def quantize_fp8(x: torch.Tensor, recipe: ScalingRecipe, role: str, history: AmaxHistory | None) -> Quantized:
    """The FP8 scalings of this module: q = cast(clamp(x·s, −max, max)), all arithmetic in fp32
    whatever x's dtype, and `clamped`, the count of finite elements the clamp changed."""
    fmt = FORMATS[recipe.format_for(role)]
    xf = x.detach().float()
    s, tile, amax = _scale_and_amax(xf, recipe, role, history)
    xs = xf * (s if tile is None else _expand(s, tile, xf.shape))
    xq = xs.clamp(-fmt.max, fmt.max)
    bad = ~torch.isfinite(xf)  # bypass the clamp (module docstring): inf must not become ±max
    clamped = _clamped(xf, xs, xq, bad, s, amax, fmt, recipe)
    xq = torch.where(bad, xs if fmt.has_inf else torch.full_like(xs, float("nan")), xq)
    return Quantized(data=xq.to(fmt.dtype), scale=s.float(), tile=tile, fmt=fmt, clamped=clamped)


def _clamped(xf, xs, xq, bad, s, amax, fmt, recipe) -> torch.Tensor:
    """Finite elements with |x·s| > max, as a 0-d long tensor, at the least cost that stays exact:
      * 0 where the recipe cannot clip (`can_clamp`), with no pass over x. The one exception is
        a tile whose amax is non-finite (s = 1, module docstring): its finite elements above max
        clip uncounted, on a step whose GEMM output is non-finite anyway (the nonfinite event).
      * on CPU, where reading a value costs no device synchronisation: 0 unless some tile has
        fl(amax·s) > max (fl(|x|·s) <= fl(amax·s) by monotonic rounding, so a tile clips exactly
        when its own maximum does; the products are the ones xs holds). With every amax finite,
        x holds no NaN/inf and the count is Σ |sign(x·s − clamp(x·s))| in floats (a clamped
        element differs from ±max, an fp32 overflow to ±inf gives ±inf: both count 1), summed
        in fp32 while that is exact (< 2^24 elements), a vectorised pass ~3x cheaper than
        counting a boolean mask on CPU.
      * else (GPU, or a non-finite amax): the elements the clamp changed minus the non-finite
        ones (NaN compares unequal to itself, an inf is clamped to ±max). No host sync."""
    zero = _zero(xf.device)
    if not can_clamp(recipe):
        return zero
    if xf.device.type == "cpu":
        if amax.dim() == 0:  # per tensor: the fp32 product of two scalars, without tensor ops
            a = np.float32(amax.item())
            with np.errstate(over="ignore"):  # an fp32 product overflowing to inf clips, as in xs
                finite, clips = bool(np.isfinite(a)), bool(a * np.float32(s.item()) > fmt.max)
        else:
            a = amax.float()
            finite, clips = bool(torch.isfinite(a).all()), bool((a * s > fmt.max).any())
        if finite and not clips:
            return zero
        if finite:
            acc = torch.float32 if xs.numel() < 2 ** 24 else torch.float64
            return (xs - xq).sign_().abs_().sum(dtype=acc).long()
    return (xq != xs).sum() - bad.sum()


_ZEROS: dict[torch.device, torch.Tensor] = {}


def _zero(device: torch.device) -> torch.Tensor:
    """A shared 0-d long zero per device (never written in place: counts are summed out of place)."""
    if device not in _ZEROS:
        _ZEROS[device] = torch.zeros((), dtype=torch.long, device=device)
    return _ZEROS[device]


class FP8Format(QuantFormat):
    """The five FP8 scalings (delayed, tensorwise, rowwise, blockwise, mx), E4M3/E5M2 elements."""
    name = "fp8"
    scalings = ("delayed", "tensorwise", "rowwise", "blockwise", "mx")
    stat_keys = Quantized.stat_keys

    def quantize(self, x, recipe, role, history=None, *, stochastic=False, generator=None):
        return quantize_fp8(x, recipe, role, history)

    def tile(self, recipe, role, shape):
        return tile_shape(recipe, role, shape)

    def linear_error(self, recipe, out_features, in_features):
        """Every FP8 recipe: both dims divisible by 16 (FP8 tensor-core GEMM operand alignment;
        each dim is the reduction dim of some GEMM: K in forward and wgrad's output, N in dgrad).
        mxfp8: both dims divisible by mx_block, so every MX block along a reduction dim is full (the
        hardware block-scaled GEMMs have no partial blocks)."""
        dims = (("in_features", in_features), ("out_features", out_features))
        if (bad := [f"{n}={v}" for n, v in dims if v % 16]):
            return f"FP8 GEMMs need in_features and out_features divisible by 16 ({', '.join(bad)})"
        if recipe.scaling == "mx" and (bad := [f"{n}={v}" for n, v in dims if v % recipe.mx_block]):
            return (f"{recipe.name} needs in_features and out_features divisible by mx_block={recipe.mx_block} "
                    f"({', '.join(bad)})")
        return None

    def reuses_casts(self, recipe):
        """Per-tensor scales are constant along every dim: the fp8 x and W of forward serve the
        backward GEMMs transposed (bench/precision/linears/reference.py)."""
        return recipe.per_tensor

    def pack(self, q):
        return q.data, q.scale

    def unpack(self, recipe, role, data, scale):
        return Quantized(data, scale, None, FORMATS[recipe.format_for(role)])

    def histories(self, recipe):
        """Delayed scaling: one AmaxHistory per role."""
        if recipe.scaling != "delayed":
            return None
        return {role: AmaxHistory(recipe.amax_history_len, recipe.amax_compute_algo, recipe.margin) for role in ROLES}


FP8 = register_format(FP8Format())
DEFAULT_FORMAT.append(FP8)
