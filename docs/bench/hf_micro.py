"""Where the time goes: one trainer forward+backward [64, 11] and one KV-cache decode step [64, 1],
built-in tiny vs HF Llama of the same shape, bf16 autocast, CPU, 1 thread."""
import sys, time, statistics, torch
sys.path.insert(0, ".")
torch.set_num_threads(1)
from bench.config.schema import ModelConfig
from bench.models import build_model, new_kv_cache
from bench.precision.mixed import autocast_context
def t(fn, n=40):
    fn(); xs = []
    for _ in range(n):
        s = time.perf_counter(); fn(); xs.append(time.perf_counter() - s)
    return statistics.median(xs)
res = {}
for label, cfg in [("builtin", ModelConfig()), ("hf", ModelConfig(kind="hf", arch="llama"))]:
    torch.manual_seed(0); m = build_model(cfg)
    idx = torch.randint(3, 128, (64, 11))
    def fb():
        with autocast_context("bf16", "cpu"):
            out = m(idx)
        out.float().mean().backward()
    cache = new_kv_cache(cfg, 64, 12, torch.bfloat16, "cpu")
    with torch.no_grad(), autocast_context("bf16", "cpu"):
        m(idx[:, :10], cache=cache, pos=0)
    def dec():
        with torch.no_grad(), autocast_context("bf16", "cpu"):
            m(idx[:, 10:11], cache=cache, pos=10)
    emb = m.embed(idx)
    def rope():
        if label == "hf":
            m.rotary(emb, torch.arange(11)[None].expand(64, 11))
        else:
            m.rope_cos[:11], m.rope_sin[:11]
    res[label] = {"fwd_bwd_ms": 1e3 * t(fb), "decode_step_ms": 1e3 * t(dec), "rope_ms": 1e3 * t(rope, 200)}
    print(label, {k: round(v, 3) for k, v in res[label].items()}, flush=True)
