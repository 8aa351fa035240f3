"""FP8 quantization: scales, saturation, tiling. The numerics ground truth of the project.

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

Scale formulas (amax = max |x| over the tile; all scales fp32):
  tensorwise, blockwise  s = max / max(amax, eps) in fp32, rounded toward zero (max_over)
  rowwise                s = 2^floor(log2(max / amax)) (rounded *down*: amax·s <= max, so the
                         rounding of the scale can never push the row's largest value over max)
  delayed                s = max / max(amax_history) / 2^margin  (see AmaxHistory)
  mx, "floor" (OCP MX v1.0)  X = 2^(floor(log2 amax) − emax_elem), s = 1/X; emax_elem = 8 for
                         E4M3, 15 for E5M2: amax lands in [256, 512), so values in (448, 512)
                         after scaling saturate (clamp); that is the spec, not a bug
  mx, "rceil"            X = 2^ceil(log2(amax / max)): the smallest power of two that fits amax,
                         never saturates, may leave up to one binade of range unused
  E8M0 holds exponents −127..127: the exponent of X is clamped there; an all-zero MX block has no
  exponent to take and gets s = 1 (any s gives q = 0).
`pow2_scales` rounds tensorwise/blockwise/delayed scales down to a power of two as well.

Why power-of-two scales: multiplying by 2^k only changes the exponent, so x·s is exact (barring
FP32 under/overflow), and x̂ = q / s is exactly the FP8 grid value scaled back: the only error is
the FP8 rounding itself. The hardware also stores such scales in 8 bits (E8M0) instead of 32.
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

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from bench.precision.formats import FORMATS, Float8Format
from bench.precision.recipes import ROLES, SCALINGS, ScalingRecipe, get_recipe

Tile = tuple[int, int]


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


def pow2_floor(s: torch.Tensor) -> torch.Tensor:
    """Largest power of two <= s, exactly (frexp: s = m·2^e with m in [0.5, 1), so floor(log2 s)
    is e − 1; no log2 rounding). Non-finite s passes through."""
    _, e = torch.frexp(s)
    return torch.where(torch.isfinite(s) & (s > 0), torch.ldexp(torch.ones_like(s), e - 1), s)


def max_over(fmt: Float8Format, amax: torch.Tensor) -> torch.Tensor:
    """fmt.max / amax (amax > 0) as the largest fp32 not above the exact quotient (rounded toward
    zero). Why not round-to-nearest: half the time that rounds s *up*, so amax·s lands an ulp
    above max and the tensor's own largest element would count as overflow (|x·s| > max) in
    ~9 % of perfectly scaled tensors, an artifact the FP8 value never sees (it clamps and rounds
    back to max). Rounded down, amax·s <= max holds exactly, so current scaling never overflows
    and delayed scaling overflows exactly when amax exceeds the history's amax (·2^margin).
    The quotient is taken tensor / tensor (torch computes `scalar / tensor` as scalar ·
    reciprocal(tensor), two roundings) and corrected by one ulp where the exact product, formed in
    fp64 (24 + 24 bits fit in 53), exceeds max."""
    a = amax.float()
    m = torch.full_like(a, fmt.max)
    s = m / a
    over = s.double() * a.double() > fmt.max
    return torch.where(over, torch.nextafter(s, torch.zeros_like(s)), s)


def _finite_or(s: torch.Tensor, amax: torch.Tensor, fallback) -> torch.Tensor:
    """The non-finite-amax guard (module docstring): s where amax is finite, else `fallback`."""
    return torch.where(torch.isfinite(amax), s, fallback)


def current_scale(amax: torch.Tensor, fmt: Float8Format, recipe: ScalingRecipe) -> torch.Tensor:
    """Current scaling (tensorwise, rowwise, blockwise): s = max / max(amax, eps) in fp32,
    rounded down to 2^k when the recipe asks (rowwise's default). An all-zero tile gets the
    largest scale max/eps (harmless: every q is 0)."""
    s = max_over(fmt, amax.float().clamp(min=recipe.eps))
    if recipe.pow2_scales:
        s = pow2_floor(s)
    return _finite_or(s, amax, torch.ones_like(s))


def mx_scale(amax: torch.Tensor, fmt: Float8Format, rounding: str) -> torch.Tensor:
    """E8M0 shared scale of each MX block, returned as the multiplier s = 1 / X (module docstring).
    Both roundings are computed from frexp exponents, exactly (no log2, no division):
      floor:  floor(log2 amax) = e_a − 1                      with amax = m_a·2^e_a
      rceil:  ceil(log2(amax / max)) = e_a − e_max + [m_a > m_max]   with max = m_max·2^e_max
    (m_a/m_max lies in (0.5/m_max, 1/m_max) ⊂ (0.5, 2) for m_max = 0.875, so the ceiling of its
    log2 is 1 exactly when m_a > m_max, else 0)."""
    a = amax.float()
    m, e = torch.frexp(a)
    if rounding == "floor":
        x_exp = (e - 1) - fmt.emax
    else:
        m_max, e_max = math.frexp(fmt.max)
        x_exp = (e - e_max) + (m > m_max).to(e.dtype)
    x_exp = x_exp.clamp(-127, 127)
    s = torch.ldexp(torch.ones_like(a), -x_exp)
    return torch.where((a > 0) & torch.isfinite(a), s, torch.ones_like(s))


def delayed_scale(amax: torch.Tensor, fmt: Float8Format, margin: int, eps: float, prev: torch.Tensor | float
                  ) -> torch.Tensor:
    """s = max / amax / 2^margin (the division by 2^margin is exact); `prev` where amax is 0 or
    non-finite. amax is floored at eps so s stays finite for denormal amaxes."""
    a = amax.float()
    s = max_over(fmt, a.clamp(min=eps)) / 2.0 ** margin
    return torch.where((a > 0) & torch.isfinite(a), s, torch.as_tensor(prev, dtype=s.dtype, device=s.device))


class AmaxHistory(nn.Module):
    """Delayed-scaling state of one tensor (Transformer Engine DelayedScaling): a rolling window
    of the last `length` amaxes, newest at index 0, and the last scale used.

    s = max / A / 2^margin with A = max(history) ("max") or history[0] ("most_recent").
    Update after use: the scale for step t comes from the history *before* step t's amax is
    added; the caller quantizes with `scale(fmt)` and then calls `update(amax_t, used_scale)`.
    That staleness is the point: the scale is known before the tensor exists, so the cast can be
    fused into the kernel that produces the tensor, with no extra pass to find its amax first.
    It is also the risk: a tensor that jumps above the window's amax saturates (overflow_frac) for
    that step. `margin` buys headroom: 2^margin times more growth absorbed, one bit less precision.
    If A is 0 or non-finite the previous scale is kept (TE); the initial scale is 1.
    Empty history (never updated): `scale_for` uses the current tensor's amax as if the history
    held it (a virtual seed; nothing is written, so after the caller's update-after-use the window
    holds that step's amax exactly once). The first step therefore equals current scaling with
    margin, where TE would use its initial scale 1 before any amax is known.
    The state lives in buffers, so it is checkpointed with the model and resume is exact."""

    def __init__(self, length: int = 16, algo: str = "max", margin: int = 0):
        super().__init__()
        if algo not in ("max", "most_recent"):
            raise ValueError(f"amax_compute_algo={algo!r}; valid: max, most_recent")
        self.algo, self.margin = algo, int(margin)
        self.register_buffer("history", torch.zeros(int(length)))
        self.register_buffer("prev_scale", torch.ones(()))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # updates so far

    def chosen_amax(self) -> torch.Tensor:
        return self.history.max() if self.algo == "max" else self.history[0]

    def scale_from(self, amax: torch.Tensor, fmt: Float8Format, eps: float = 1e-12) -> torch.Tensor:
        return delayed_scale(amax, fmt, self.margin, eps, self.prev_scale)

    def scale(self, fmt: Float8Format, eps: float = 1e-12) -> torch.Tensor:
        """The scale for the next use, from the history as it is now."""
        return self.scale_from(self.chosen_amax(), fmt, eps)

    @torch.no_grad()
    def update(self, amax: torch.Tensor, used_scale: torch.Tensor | None = None) -> None:
        """Roll `amax` in (oldest entry drops out); remember the scale that was just used."""
        a = amax.detach().to(self.history).reshape(1)
        self.history.copy_(torch.cat([a, self.history[:-1]]))
        if used_scale is not None:
            self.prev_scale.copy_(used_scale.detach().to(self.prev_scale).reshape(()))
        self.count += 1

    def extra_repr(self) -> str:
        return f"length={self.history.numel()}, algo={self.algo}, margin={self.margin}"


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


QuantizerFn = Callable[[torch.Tensor, ScalingRecipe, str, "AmaxHistory | None"], Quantized]
QUANTIZERS: dict[str, QuantizerFn] = {}


def register_quantizer(scaling: str, fn: QuantizerFn) -> None:
    """The quantizer for one scaling: fn(x [rows, K] (any float dtype), recipe, role, history)
    -> Quantized. `quantize` validates its arguments and dispatches here, so every consumer
    (the reference linear, the inference linear, the monitor, fake_quantize) runs a new recipe
    once its quantizer is registered."""
    QUANTIZERS[scaling] = fn


def quantize(x: torch.Tensor, recipe, role: str = "input", history: AmaxHistory | None = None) -> Quantized:
    """Quantize a 2-D tensor [rows, K] (K = the GEMM reduction dim) with the recipe's scaling for
    this role. `history` (delayed scaling only) is read, not updated: updating after use is the
    caller's."""
    recipe = get_recipe(recipe)
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
    if x.dim() != 2:
        raise ValueError(f"quantize expects a 2-D [rows, K] tensor, got shape {tuple(x.shape)}")
    fn = QUANTIZERS.get(recipe.scaling)
    if fn is None:
        raise ValueError(f"no quantizer registered for scaling {recipe.scaling!r} ({recipe.name}); "
                         f"registered: {', '.join(QUANTIZERS)}")
    return fn(x, recipe, role, history)


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


for _scaling in SCALINGS:
    register_quantizer(_scaling, quantize_fp8)


def fake_quantize(x: torch.Tensor, recipe, role: str = "input") -> torch.Tensor:
    """DESIGN.md §10: the dequantized x̂ the recipe's GEMM would consume, x [rows, K].

    Returns fp32 whatever x's dtype: x̂ = q / s generally has more significant bits than bf16 or
    fp16 hold (q has 4 bits, s is an arbitrary fp32), and fp32 is what the emulated GEMM consumes;
    cast it yourself if you need x's dtype. Not differentiable (x is detached). fp8_delayed is
    taken as of a first step: the history holds only the current amax, i.e. current scaling with
    margin. role "grad_output" is accepted too (grad_format and activation tiling)."""
    return quantize(x, recipe, role).dequantize()
