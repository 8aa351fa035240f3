"""Replay: the generator's computation of given tokens, step by step as generate() ran it.

generate() samples token t from the logits at position P−1+t, computed by the prefill (t = 0)
and then by one decode step per token with the KV cache (or, without the cache, by a full
forward of the fixed-width [B, P+N−1] input, in which position P−1+t does not depend on the
step). Feeding the sampled tokens back through the same calls, on the same batch, repeats that
computation exactly: same inputs, same shapes, same kernels. So attribution can read the hidden
states that produced lp_gen without generate() keeping them, and the source ablation can rescore
the same tokens with another generator configuration as that generator would have computed them.
"""
from __future__ import annotations

import torch

from bench.models.kvcache import KVCache
from bench.models.decoder import token_logprobs
from bench.precision.mixed import compute_dtype


def _take(sites: dict, out: dict, sl) -> None:
    for name, x in sites.items():
        out.setdefault(name, []).append(x[:, sl].float())


@torch.no_grad()
def replay(gen, tokens: torch.Tensor, prompt_len: int, use_kv_cache: bool = True, temperature: float = 1.0,
           with_sites: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Log-probs [B, N] (untruncated, softmax(logits / T); T = 0 scores at T = 1) of
    tokens[:, P:] as `gen` computes them when it generates them, and, with `with_sites`, the
    attribution sites at the positions that produced them: name -> [B, N, ...] fp32."""
    if gen.refits == 0:
        raise RuntimeError("Generator has no weights yet: call refit(trainer_model) first")
    P, T = prompt_len, (temperature if temperature > 0 else 1.0)
    tokens = tokens.to(gen.device)
    B, N = tokens.shape[0], tokens.shape[1] - P
    acc: dict[str, list] = {}
    with torch.inference_mode(), gen.context():
        if not use_kv_cache:
            sites = {} if with_sites else None
            logits = gen.model(tokens[:, :-1], sites=sites)[:, P - 1:]
            if with_sites:
                _take(sites, acc, slice(P - 1, None))
        else:
            hd = gen.cfg.d_model // gen.cfg.n_heads
            cache = KVCache(gen.cfg.n_layers, B, gen.cfg.n_heads, P + N - 1, hd, compute_dtype(gen.name),
                            gen.device, fp8=gen.kv_fp8, headroom=gen.kv_headroom)
            steps = []
            sites = {} if with_sites else None
            steps.append(gen.model(tokens[:, :P], cache=cache, pos=0, sites=sites)[:, -1:])
            if with_sites:
                _take(sites, acc, slice(-1, None))
            for t in range(N - 1):
                sites = {} if with_sites else None
                steps.append(gen.model(tokens[:, P + t:P + t + 1], cache=cache, pos=P + t, sites=sites))
                if with_sites:
                    _take(sites, acc, slice(None))
            logits = torch.cat(steps, dim=1)
        lp = token_logprobs(logits, tokens[:, P:], T)
    return lp.clone(), {k: torch.cat(v, dim=1).clone() for k, v in acc.items()}
