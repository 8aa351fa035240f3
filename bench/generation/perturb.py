"""SYNTHETIC fault injection (issue 25): noise on the generator, to calibrate what mismatch costs.

Not a precision, not a model of any engine: a dial. A user turns it to measure a dose-response
curve — sigma -> tmpe, gen_kl_k3 -> Δ accuracy, Δ reward, with and without IS — and so learns how
much trainer/generator disagreement their task tolerates, which no real precision cell on the tiny
task reaches. Off by default (sigma 0); when on it is named as synthetic everywhere: the
`synthetic/perturb_sigma` metric, summary.json's `synthetic` entry, and the report's variant
label (`SYNTHETIC-perturb(<target>,σ=<sigma>)`, bench/report/runs.py).

`generator.perturb`:
  sigma   the noise's standard deviation (0 = off)
  target  logits: every forward's logits z of the generator (prefill, decode, and `score`) become
                  z + sigma·ε, ε ~ N(0, 1) per element — the generator samples from, and reports
                  log-probs of, the perturbed distribution; the trainer never sees the noise
          weights: at every refit each `.weight` tensor W of the trainer's state is loaded as
                  W + sigma·rms(W)·ε (relative, so one sigma means the same on every layer),
                  before the generator's own quantization
  seed    the noise's own RNG stream (a CPU torch.Generator), separate from the sampling RNG:
          perturbed and clean runs of one seed draw the same sampling uniforms (common random
          numbers), so their difference is the noise's, not the sampler's
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

TARGETS = ("logits", "weights")


@dataclass
class PerturbConfig:
    """generator.perturb (the one place these defaults live; bench/config/schema.py uses it)."""
    sigma: float = 0.0
    target: str = "logits"
    seed: int = 0

    def validate(self) -> str | None:
        if self.target not in TARGETS:
            return f"generator.perturb.target={self.target!r}; valid: {', '.join(TARGETS)}"
        if not (self.sigma >= 0 and self.sigma < float("inf")):
            return f"generator.perturb.sigma={self.sigma!r}; valid: a finite number >= 0 (0 = off)"
        return None

    @property
    def on(self) -> bool:
        return self.sigma > 0

    def label(self) -> str:
        return f"SYNTHETIC-perturb({self.target},σ={self.sigma:g})"


class _NoisyState:
    """What Generator.refit reads from a trainer: its state_dict, with noise on every weight."""

    def __init__(self, model, sigma: float, rng: torch.Generator):
        self.model, self.sigma, self.rng = model, sigma, rng

    def state_dict(self) -> dict:
        out = {}
        for k, v in self.model.state_dict().items():
            if hasattr(v, "full_tensor"):
                v = v.full_tensor()
            if k.endswith(".weight") and v.is_floating_point():
                w = v.detach().float()
                eps = torch.randn(w.shape, generator=self.rng).to(w.device)
                v = (w + self.sigma * w.pow(2).mean().sqrt() * eps).to(v.dtype)
            out[k] = v
        return out


class Perturbation:
    """Installs the configured noise on a Generator (bench/generation/generator.py)."""

    def __init__(self, cfg: PerturbConfig):
        self.cfg = cfg
        self.rng = torch.Generator().manual_seed(int(cfg.seed))

    def install(self, generator) -> None:
        if not self.cfg.on:
            return
        if self.cfg.target == "logits":
            generator.model.register_forward_hook(self._logits_hook)
        else:
            refit = generator.refit
            generator.refit = lambda trainer_model: refit(_NoisyState(trainer_model, self.cfg.sigma, self.rng))

    def _logits_hook(self, module, args, out):
        if not isinstance(out, torch.Tensor):
            return out
        eps = torch.randn(out.shape, generator=self.rng).to(device=out.device, dtype=torch.float32)
        return (out.float() + self.cfg.sigma * eps).to(out.dtype)

    def metrics(self) -> dict[str, float]:
        return {"synthetic/perturb_sigma": float(self.cfg.sigma)} if self.cfg.on else {}

    def summary(self) -> dict:
        return {"perturb": {"sigma": self.cfg.sigma, "target": self.cfg.target, "seed": self.cfg.seed},
                "note": "SYNTHETIC fault injection (generator.perturb): not a precision; calibration only"}
