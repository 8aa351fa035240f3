"""FP8 quantization: scales, saturation, tiling. The numerics ground truth of the project.

Convention (DESIGN.md §5): a scale s multiplies, q = cast(clamp(x·s, −max, max)), x̂ = q / s.
Operands are 2-D [rows, K] with K the GEMM's reduction dim; tiles always run along K, and a
caller whose GEMM reduces over the other dim transposes first. Granularity:
  delayed, tensorwise   one scale for the tensor
  rowwise               one scale per row (each output element of the GEMM then sees one scale
                        per operand, so the dequantisation is an exact outer-product rescale)
  blockwise             role input/grad_output: 1 x act_block tiles; role weight:
                        weight_block x weight_block blocks (square, so Wᵀ reuses W's blocks)
  mx                    1 x mx_block along K for every role, scale a power of two (E8M0)
Why clamp before the cast: torch's cast to float8_e4m3fn maps out-of-range values to NaN (the
format has no infinity), so saturation must be explicit. It is also what "overflow" means here:
an element with |x·s| > max is clipped to ±max and its information is lost.
Why power-of-two scales: multiplying by 2^k changes only the exponent, so scaling itself adds no
rounding error and x̂ is exactly the FP8 grid value scaled back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from bench.precision.formats import FORMATS, Float8Format
from bench.precision.recipes import Recipe, get_recipe


@dataclass
class Quantized:
    data: torch.Tensor      # fp8, same shape as the input
    scale: torch.Tensor     # fp32, compact: [] | [rows,1] | [rows, n_tiles] | [row_blocks, col_blocks]
    tile: tuple[int, int]   # tile shape the compact scale refers to
    fmt: Float8Format

    def scale_full(self) -> torch.Tensor:
        if self.scale.dim() == 0:
            return self.scale.expand(self.data.shape)
        return _expand(self.scale, self.tile, self.data.shape)

    def dequantize(self) -> torch.Tensor:
        return self.data.float() / self.scale_full()


def tile_shape(recipe: Recipe, role: str, shape: tuple[int, int]) -> tuple[int, int] | None:
    """Tile (rows, cols) sharing one scale; None = the whole tensor."""
    rows, k = shape
    if recipe.per_tensor:
        return None
    if recipe.scaling == "rowwise":
        return (1, k)
    if recipe.scaling == "blockwise":
        b = recipe.weight_block
        return (b, b) if role == "weight" else (1, recipe.act_block)
    return (1, recipe.mx_block)


def tile_amax(x: torch.Tensor, tile: tuple[int, int] | None) -> torch.Tensor:
    """max |x| per tile (partial edge tiles allowed: zero padding never raises an amax)."""
    if tile is None:
        return x.abs().amax()
    rows, cols = x.shape
    tr, tc = tile
    pr, pc = -rows % tr, -cols % tc
    xp = torch.nn.functional.pad(x.abs(), (0, pc, 0, pr))
    return xp.view((rows + pr) // tr, tr, (cols + pc) // tc, tc).amax(dim=(1, 3))


def _pow2_floor(s: torch.Tensor) -> torch.Tensor:
    """Largest power of two <= s (exact, via frexp: s = m·2^e with m in [0.5, 1))."""
    _, e = torch.frexp(s)
    return torch.ldexp(torch.ones_like(s), e - 1)


def max_over(fmt: Float8Format, amax: torch.Tensor) -> torch.Tensor:
    """fmt.max / amax, correctly rounded in fp32. Written as tensor / tensor on purpose: torch
    evaluates `python_scalar / tensor` as scalar · reciprocal(tensor) on CPU, two roundings that
    miss the correctly rounded scale by an ulp for about a quarter of inputs."""
    a = amax.float()
    return torch.full_like(a, fmt.max) / a


def amax_to_scale(amax: torch.Tensor, fmt: Float8Format, recipe: Recipe) -> torch.Tensor:
    """s = max / max(amax, eps) in fp32, rounded down to 2^k for rowwise/pow2 recipes."""
    s = max_over(fmt, amax.float().clamp(min=recipe.eps))
    return _pow2_floor(s) if recipe.pow2_scales or recipe.scaling == "rowwise" else s


def mx_scale(amax: torch.Tensor, fmt: Float8Format, rounding: str) -> torch.Tensor:
    """E8M0 shared scale of an MX block, returned as the multiplier s = 1 / X.
    floor (OCP MX v1.0): X = 2^(floor(log2 amax) − emax): the block max lands in the element's
      top binade; values above fmt.max after scaling saturate.
    rceil: X = 2^ceil(log2(amax / max)): never saturates, may use less of the range.
    The exponent of X is clamped to E8M0's [−127, 127]; an all-zero block gets s = 1."""
    a = amax.float()
    m, e = torch.frexp(a)  # a = m·2^e, m in [0.5, 1): floor(log2 a) = e − 1
    if rounding == "floor":
        x_exp = (e - 1) - fmt.emax
    else:
        rm, re = torch.frexp(a / torch.full_like(a, fmt.max))
        x_exp = torch.where(rm == 0.5, re - 1, re)  # ceil(log2): exact powers of two stay
    x_exp = x_exp.clamp(-127, 127)
    s = torch.ldexp(torch.ones_like(a), -x_exp)
    return torch.where(a > 0, s, torch.ones_like(s))


class AmaxHistory(nn.Module):
    """Delayed scaling state (Transformer Engine DelayedScaling): a rolling window of past amaxes.
    The scale used at step t comes from the history *before* t's amax is added ("update after
    use"); that staleness is the whole point (no extra pass over the tensor) and the whole risk
    (a sudden outlier saturates). Newest entry at index 0. Buffers, so checkpoints restore it.
    If the chosen amax is 0 or non-finite the previous scale is kept (TE's behaviour)."""

    def __init__(self, length: int, algo: str = "max", margin: int = 0):
        super().__init__()
        self.algo, self.margin = algo, margin
        self.register_buffer("history", torch.zeros(length))
        self.register_buffer("prev_scale", torch.ones(()))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def scale(self, fmt: Float8Format) -> torch.Tensor:
        amax = self.history.max() if self.algo == "max" else self.history[0]
        s = max_over(fmt, amax) / 2.0 ** self.margin
        ok = (amax > 0) & torch.isfinite(amax)
        return torch.where(ok, s, self.prev_scale)

    @torch.no_grad()
    def update(self, amax: torch.Tensor, used_scale: torch.Tensor | None = None) -> None:
        self.history.copy_(torch.cat([amax.float().reshape(1), self.history[:-1]]))
        if used_scale is not None:
            self.prev_scale.copy_(used_scale)
        self.count += 1


def scale_for(x: torch.Tensor, recipe: Recipe, role: str, history: AmaxHistory | None = None
              ) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """The compact scale tensor and its tile shape for quantizing x [rows, K]."""
    fmt = FORMATS[recipe.format_for(role)]
    tile = tile_shape(recipe, role, tuple(x.shape))
    amax = tile_amax(x, tile)
    if recipe.scaling == "delayed":
        if history is None or int(history.count) == 0:
            # First use: an empty history has no information, so the first step scales by the
            # current amax (with margin), exactly like current scaling.
            s = max_over(fmt, amax.float().clamp(min=recipe.eps)) / 2.0 ** recipe.margin
            s = torch.where(amax > 0, s, torch.ones_like(s)) if history is None else torch.where(
                amax > 0, s, history.prev_scale)
        else:
            s = history.scale(fmt)
        return (_pow2_floor(s) if recipe.pow2_scales else s).float(), None
    if recipe.scaling == "mx":
        return mx_scale(amax, fmt, recipe.mx_scale_rounding), tile
    return amax_to_scale(amax, fmt, recipe), tile


def quantize(x: torch.Tensor, recipe, role: str = "input", history: AmaxHistory | None = None) -> Quantized:
    """Quantize a 2-D tensor with the recipe's scaling for this role."""
    recipe = get_recipe(recipe)
    if x.dim() != 2:
        raise ValueError(f"quantize expects a 2-D [rows, K] tensor, got shape {tuple(x.shape)}")
    fmt = FORMATS[recipe.format_for(role)]
    xf = x.float()
    s, tile = scale_for(xf, recipe, role, history)
    q = Quantized(data=torch.empty(0), scale=s, tile=tile or (1, 1), fmt=fmt)
    xs = xf * (s if tile is None else _expand(s, tile, xf.shape))
    q.data = xs.clamp(-fmt.max, fmt.max).to(fmt.dtype)
    return q


def _expand(s: torch.Tensor, tile: tuple[int, int], shape) -> torch.Tensor:
    rows, cols = shape
    tr, tc = tile
    return s.repeat_interleave(tr, 0)[:rows].repeat_interleave(tc, 1)[:, :cols]


def fake_quantize(x: torch.Tensor, recipe, role: str = "input") -> torch.Tensor:
    """DESIGN.md §10: the dequantized x̂ (fp32) that the recipe's GEMM would consume. fp8_delayed
    is taken as of a first step (history holding only the current amax)."""
    return quantize(x, recipe, role).dequantize()


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor, cap: float = 200.0) -> float:
    """20·log10(‖x‖ / ‖x − x̂‖); `cap` when the quantization is exact."""
    num, den = x.double().norm(), (x.double() - x_hat.double()).norm()
    if den == 0:
        return cap
    return min(cap, 20 * math.log10(max(float(num), 1e-300) / float(den)))
