"""Importance-sampling correction of the trainer/generator mismatch (DESIGN.md §6).

The rollout was sampled from the generator p_g, but the policy gradient is taken for the
trainer's p_t. Weighting each token's loss by ρ = p_t / p_g = exp(r) makes the estimate unbiased,
but ρ is heavy-tailed (one token the generator under-rated by 100x dominates a batch), so
every practical variant trades bias for variance:
  tis       min(ρ, C) per token: truncation bounds the variance, biased where ρ > C
  icepop    ρ·1[lo ≤ ρ ≤ hi]: tokens far out of the band are dropped outright (no gradient)
  seq_tis   min(exp(Σ_t r), C) for the whole sequence: the correct ratio for sequence-level
            rewards, but it compounds over length, hence the cap
  seq_mask  exp(Σ_t r)·1[lo ≤ · ≤ hi]
  geo_mask  drop the sequence when the per-token geometric mean exp(mean_t r) leaves [lo, hi]
            (length-normalised, so long responses are not dropped just for being long);
            kept tokens use min(ρ, C)
Options: `veto` drops a sequence holding any token with ρ < veto (a token the trainer considers
near-impossible is a sign of a numerics failure, not of exploration); `batch_normalize` divides
the weights by their mean over valid tokens so the loss scale does not drift with the mismatch.

Weights are detached (they correct the estimator; they are not trained through). Sums of r are
clamped to ±20 before exp so sequence ratios stay finite.
"""
from __future__ import annotations

import torch

CLAMP = 20.0


def _tis(rho, seq_r, seq_mean_r, o):
    w = rho.clamp(max=o["cap"])
    return w.clamp(min=o["lower_cap"]) if o["lower_cap"] is not None else w


def _icepop(rho, seq_r, seq_mean_r, o):
    return rho * ((rho >= o["lo"]) & (rho <= o["hi"]))


def _seq_tis(rho, seq_r, seq_mean_r, o):
    return torch.exp(seq_r).clamp(max=o["cap"])[:, None].expand_as(rho)


def _seq_mask(rho, seq_r, seq_mean_r, o):
    s = torch.exp(seq_r)
    return (s * ((s >= o["lo"]) & (s <= o["hi"])))[:, None].expand_as(rho)


def _geo_mask(rho, seq_r, seq_mean_r, o):
    g = torch.exp(seq_mean_r)
    keep = (g >= o["lo"]) & (g <= o["hi"])
    return rho.clamp(max=o["cap"]) * keep[:, None]


IS_MODES = {"none": lambda rho, *_: torch.ones_like(rho), "tis": _tis, "icepop": _icepop,
            "seq_tis": _seq_tis, "seq_mask": _seq_mask, "geo_mask": _geo_mask}
BAND_MODES = ("icepop", "seq_mask", "geo_mask")


def importance_weights(lp_gen: torch.Tensor, lp_train: torch.Tensor, mask: torch.Tensor, mode: str = "tis",
                       cap: float = 2.0, lo: float = 0.5, hi: float = 2.0, veto: float | None = None,
                       batch_normalize: bool = False, lower_cap: float | None = None
                       ) -> tuple[torch.Tensor, dict[str, float]]:
    """[B, T] float32 weights (0 where mask is False) and the `is/*` metrics.

    frac_high / frac_low count raw token ratios outside the mode's bounds: above `hi` (band
    modes) or `cap` (none, tis, seq_tis); below `lower_cap` when given, else below `lo`."""
    if mode not in IS_MODES:
        raise ValueError(f"unknown is_correction mode {mode!r}; valid: {', '.join(IS_MODES)}")
    m = mask.bool()
    mf = m.double()
    r = torch.where(m, lp_train.detach().double() - lp_gen.detach().double(), 0.0)
    rho = torch.exp(r.clamp(-CLAMP, CLAMP))
    n_tok = mf.sum(1)
    seq_r = r.sum(1).clamp(-CLAMP, CLAMP)
    seq_mean_r = (r.sum(1) / n_tok.clamp(min=1)).clamp(-CLAMP, CLAMP)
    opts = {"cap": cap, "lo": lo, "hi": hi, "lower_cap": lower_cap}
    w = IS_MODES[mode](rho, seq_r, seq_mean_r, opts).double() * mf
    vetoed = torch.zeros(len(m), dtype=torch.bool, device=m.device)
    if veto is not None:
        vetoed = ((rho < veto) & m).any(1)
        w = w * (~vetoed)[:, None]
    if batch_normalize:
        mean_w = (w * mf).sum() / mf.sum().clamp(min=1)
        if mean_w > 0:
            w = w / mean_w
    metrics = _metrics(rho, w, m, vetoed, mode, opts)
    return w.float().detach(), metrics


def _stats(name: str, x: torch.Tensor) -> dict[str, float]:
    if x.numel() == 0:
        return {f"is/{name}_{k}": float("nan") for k in ("mean", "std", "min", "max")}
    return {f"is/{name}_mean": float(x.mean()), f"is/{name}_std": float(x.std(unbiased=False)),
            f"is/{name}_min": float(x.min()), f"is/{name}_max": float(x.max())}


def _metrics(rho, w, m, vetoed, mode, o) -> dict[str, float]:
    raw, wv = rho[m], w[m]
    out = {**_stats("raw", raw), **_stats("weight", wv)}
    mean_w = wv.mean() if wv.numel() else torch.tensor(float("nan"))
    # Kish effective sample size as a fraction of the valid tokens: 1 = uniform weights.
    out["is/ess"] = float(1.0 / ((wv / mean_w) ** 2).mean()) if wv.numel() and mean_w > 0 else 0.0
    high = o["hi"] if mode in BAND_MODES else o["cap"]
    low = o["lower_cap"] if o["lower_cap"] is not None else o["lo"]
    n = max(raw.numel(), 1)
    out["is/frac_high"] = float((raw > high).sum()) / n
    out["is/frac_low"] = float((raw < low).sum()) / n
    out["is/token_masked_frac"] = float((wv == 0).sum()) / n
    has = m.any(1)
    n_seq = max(int(has.sum()), 1)
    seq_zero = has & ~((w != 0) & m).any(1)
    out["is/seq_masked_frac"] = float(seq_zero.sum()) / n_seq
    out["is/veto_seq_frac"] = float((vetoed & has).sum()) / n_seq
    return out
