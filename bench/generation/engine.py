"""The generator: samples rollouts with its own copy of the policy, in its own precision.

Why a separate engine: in RL systems the sampler (vLLM, SGLang) is not the trainer. It holds its
own weights (refit from the trainer each step), runs its own kernels and precision (often FP8
W8A8 and an FP8 KV cache) and decodes incrementally with a KV cache, while the trainer scores the
same tokens with a full forward. Every difference between the two is trainer/generator mismatch;
this engine reproduces those differences honestly instead of reusing the trainer's modules.

Precision: fp32/bf16/fp16 run the generator's copy under the same autocast as the trainer; an FP8
recipe runs W8A8 through the reference FP8 linear in inference mode (weights and activations
quantized with the recipe's granularity; delayed scaling has no history at inference, so it
uses the current amax, as inference engines do).

Log-probs: for each sampled token the engine reports
  logprobs              log-prob under the distribution it actually sampled from (temperature T,
                        after top-k/top-p truncation and renormalisation)
  logprobs_untruncated  log-prob under softmax(logits / T) without truncation. The trainer
                        recomputes exactly this quantity, so mismatch is measured on it: the two
                        sides then differ only by numerics, not by the sampling filter.
Temperature 0 is greedy; its log-probs are those of softmax(logits) (T = 1).
With use_kv_cache=False each step recomputes the whole prefix, and the reported log-probs come
from one full forward over the final sequence (the trainer's own computation): with the
trainer's precision this makes token_mult_prob_error exactly 1, the harness's zero point.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.errors import BadInput
from bench.generation.kvcache import KVCache
from bench.model import ModelConfig, Transformer
from bench.precision.engines import PrecisionPlan, apply_precision, plan_precision
from bench.precision.mixed import autocast_context, compute_dtype


@dataclass
class Rollout:
    tokens: torch.Tensor                # [B, P+N] prompt + response (EOS-padded after a stop)
    response_mask: torch.Tensor         # [B, N] valid response tokens, EOS included
    logprobs: torch.Tensor              # [B, N] under the (truncated) sampling distribution
    logprobs_untruncated: torch.Tensor  # [B, N] under softmax(logits / T)


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits outside the top-k / top-p (nucleus) set with -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_l, idx = logits.sort(dim=-1, descending=True)
        probs = sorted_l.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    return logits


class Generator:
    def __init__(self, model_cfg: ModelConfig, precision, device, kv_cache_dtype: str = "auto"):
        precision = dict(precision) if not isinstance(precision, str) else {"name": precision}
        engine = precision.get("engine", "auto")
        if engine not in ("auto", "reference"):
            raise BadInput(f"generator_precision.engine={engine!r}: the generator runs FP8 through its own "
                           f"W8A8 path; valid: auto, reference")
        if kv_cache_dtype not in ("auto", "fp8"):
            raise BadInput(f"generator.kv_cache_dtype={kv_cache_dtype!r}; valid: auto, fp8")
        precision["engine"] = "reference"
        self.cfg, self.device, self.name = model_cfg, torch.device(device), precision["name"]
        self.kv_fp8 = kv_cache_dtype == "fp8"
        self.model = Transformer(model_cfg).to(self.device).eval().requires_grad_(False)
        self.base_keys = list(self.model.state_dict())
        self.plan, engine_obj = plan_precision(self.model, precision, self.device)
        apply_precision(self.model, self.plan, engine_obj)
        self.engine_name = "w8a8-reference" if self.plan.recipe else self.plan.engine

    @torch.no_grad()
    def refit(self, trainer_model: torch.nn.Module) -> None:
        """Copy the trainer's weights into this engine's own tensors (never shared storage)."""
        src = trainer_model.state_dict()
        missing = [k for k in self.base_keys if k not in src]
        if missing:
            raise RuntimeError(f"refit: trainer state lacks {missing[:3]}")
        own = self.model.state_dict()
        for k in self.base_keys:
            own[k].copy_(src[k])

    def context(self):
        return autocast_context(self.name, self.device)

    @torch.no_grad()  # not inference_mode: the rollout's tensors feed the trainer's autograd
    def generate(self, prompts: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, eos_id: int = 2, generator: torch.Generator | None = None,
                 use_kv_cache: bool = True) -> Rollout:
        B, P = prompts.shape
        dev = self.device
        seq = prompts.to(dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        toks, lps, lps_full, valid = [], [], [], []
        cache = None
        with self.context():
            if use_kv_cache:
                hd = self.cfg.d_model // self.cfg.n_heads
                cache = KVCache(self.cfg.n_layers, B, self.cfg.n_heads, P + max_new_tokens, hd,
                                compute_dtype(self.name), dev, fp8=self.kv_fp8)
                logits = self.model(seq, cache=cache, pos=0)[:, -1]
            else:
                logits = self.model(seq)[:, -1]
            for t in range(max_new_tokens):
                tok, lp, lp_full = self._sample(logits.float(), temperature, top_k, top_p, generator)
                valid.append(~done)
                tok = torch.where(done, torch.full_like(tok, eos_id), tok)
                toks.append(tok)
                lps.append(lp)
                lps_full.append(lp_full)
                done = done | (tok == eos_id)
                seq = torch.cat([seq, tok[:, None]], 1)
                if done.all() or t == max_new_tokens - 1:
                    break
                logits = (self.model(tok[:, None], cache=cache, pos=P + t)[:, -1] if use_kv_cache
                          else self.model(seq)[:, -1])
            mask = torch.stack(valid, 1)
            lp, lp_full = torch.stack(lps, 1), torch.stack(lps_full, 1)
            if not use_kv_cache:  # score the final sequence with one full forward (trainer's computation)
                full = self.model(seq[:, :-1])[:, P - 1:].float()
                T = temperature if temperature > 0 else 1.0
                lp_full = torch.log_softmax(full / T, -1).gather(-1, seq[:, P:, None])[..., 0]
                if temperature > 0 and not top_k and top_p >= 1.0:
                    lp = lp_full
        zero = torch.zeros((), device=dev)
        return Rollout(tokens=seq, response_mask=mask, logprobs=torch.where(mask, lp, zero),
                       logprobs_untruncated=torch.where(mask, lp_full, zero))

    @staticmethod
    def _sample(logits, temperature, top_k, top_p, generator):
        if temperature <= 0:  # greedy
            logp = torch.log_softmax(logits, -1)
            tok = logits.argmax(-1)
            lp = logp.gather(-1, tok[:, None])[:, 0]
            return tok, lp, lp
        scaled = logits / temperature
        logp_full = torch.log_softmax(scaled, -1)
        logp = torch.log_softmax(_filter(scaled, top_k, top_p), -1)
        tok = torch.multinomial(logp.exp(), 1, generator=generator)[:, 0]
        return tok, logp.gather(-1, tok[:, None])[:, 0], logp_full.gather(-1, tok[:, None])[:, 0]
