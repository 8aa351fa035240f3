"""Flash-decoding's split count, as FlashAttention chooses it (generator kernels split_kv with
batch_invariant=false; /work/notes/peer_spec.md §4).

FlashAttention-2 csrc/flash_attn/flash_api.cpp `num_splits_heuristic` (called from
`set_params_splitkv` when num_splits = 0, which is what vLLM's FlashAttention backend passes,
vllm/v1/attention/backends/flash_attn.py `max_num_splits = 0`): with b = batch·heads·m_blocks
tiles of work, SMs = 2·num_SMs (two CTAs per SM) and n = n_blocks key blocks,
  - b >= 0.8·SMs: the batch already fills the GPU, 1 split;
  - else, over s = 1..min(max_splits, SMs, n), the counts whose blocks per split ceil(n/s) differ
    from ceil(n/(s−1)) (s = 1 always) are eligible; waves = b·s / SMs, eff = waves / ceil(waves)
    (fp32); the answer is the smallest eligible s with eff >= 0.85·max eff.
So the split count, and with it the order in which a token's attention is reduced, depends on how
many sequences share the batch. m_blocks = ceil(T_q / 64) (kBlockM = 64 for split-KV). The key
block is our kv_chunk (FlashAttention's block_n is 64..256 keys by head size; the tiny model's
sequences would fit one such block, so kv_chunk stands in for it); `notional_sms` (132, an H100
SXM) is the GPU the heuristic is run for.
"""
from __future__ import annotations

import math

import numpy as np

MAX_SPLITS = 128  # set_params_splitkv's cap


def num_splits_heuristic(batch_nheads_mblocks: int, num_sms: int, num_n_blocks: int,
                         max_splits: int = MAX_SPLITS) -> int:
    """FA2's num_splits_heuristic (see the module docstring); num_sms as the heuristic receives it."""
    if batch_nheads_mblocks >= 0.8 * num_sms:
        return 1
    max_splits = min(max_splits, num_sms, num_n_blocks)
    eligible = lambda s: s == 1 or math.ceil(num_n_blocks / s) != math.ceil(num_n_blocks / (s - 1))
    effs = []
    for s in range(1, max_splits + 1):
        if not eligible(s):
            effs.append(np.float32(0.0))
            continue
        waves = np.float32(batch_nheads_mblocks * s) / np.float32(num_sms)
        effs.append(waves / np.float32(math.ceil(waves)))
    best = max(effs) if effs else np.float32(0.0)
    for s, eff in enumerate(effs, start=1):
        if eligible(s) and eff >= np.float32(0.85) * best:
            return s
    return 1


def flash_splits(batch: int, heads: int, q_len: int, k_len: int, kv_chunk: int, notional_sms: int) -> int:
    """Split count for one attention call: set_params_splitkv's arguments (2·SMs, m_blocks of 64
    queries, n_blocks of kv_chunk keys) to num_splits_heuristic."""
    m_blocks = math.ceil(q_len / 64)
    n_blocks = math.ceil(k_len / kv_chunk)
    return num_splits_heuristic(batch * heads * m_blocks, 2 * notional_sms, n_blocks)
