"""FP8 scales: the element formats and the formulas that turn an amax into a scale (DESIGN.md §5).
Used by the FP8 quantizer (fp8.py), and by the generator's FP8 KV cache and kernels.

Element formats: the two FP8 formats of the OCP FP8 spec, as torch implements them.
  E4M3 (float8_e4m3fn): 4 exponent bits, 3 mantissa bits, no infinities ("fn" = finite + NaN);
        max 448 = 1.75·2^8, smallest subnormal 2^-9. Relative step 2^-3 = 12.5 % per binade
        but only ~18 binades of range.
  E5M2 (float8_e5m2):   5 exponent bits, 2 mantissa bits, IEEE-like with ±inf; max 57344 =
        1.75·2^15, smallest subnormal 2^-16. Coarser (25 % steps) but ~32 binades of range.

Why E4M3 forward and E5M2 gradients (the "HYBRID" recipes): activations and weights are bounded
and fairly well conditioned, so the extra mantissa bit buys accuracy; gradients span many more
orders of magnitude within one tensor (a few huge entries, a long tail of tiny ones) and a single
per-tensor scale must cover all of them, so range matters more than precision. Fine-grained
recipes (rowwise, blockwise, MX) give every row/tile its own scale, which removes most of that
dynamic-range problem, so they keep E4M3 for gradients too.

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
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from bench.precision.recipes import ScalingRecipe


@dataclass(frozen=True)
class Float8Format:
    name: str
    dtype: torch.dtype
    max: float            # largest finite magnitude: everything is clamped to ±max before the cast
    min_subnormal: float  # smallest positive value; |x·s| < min_subnormal / 2 flushes to 0

    @property
    def emax(self) -> int:
        """Exponent of the largest power of two <= max (8 for E4M3, 15 for E5M2): the "emax_elem"
        of the OCP MX spec, which places an MX block's amax in the element format's top binade."""
        return math.floor(math.log2(self.max))

    @property
    def has_inf(self) -> bool:
        """E5M2 can hold ±inf; E4M3fn cannot (an infinite input becomes NaN there)."""
        return self.dtype == torch.float8_e5m2


FORMATS: dict[str, Float8Format] = {
    "e4m3": Float8Format("e4m3", torch.float8_e4m3fn, 448.0, 2.0 ** -9),
    "e5m2": Float8Format("e5m2", torch.float8_e5m2, 57344.0, 2.0 ** -16),
}


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
