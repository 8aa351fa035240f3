"""Attribution: where along the network the trainer and the generator part ways (DESIGN §11).

Both sides' hidden states on the tokens the generator sampled, at the sites (in order)
`embed`, `layers.<i>.attn` (residual stream after the attention block), `layers.<i>.mlp` (after
the MLP block), `norm` (final norm output), `logits`, over valid response positions, in float64:

    rel_diff = 1 − 2·Σxy / Σ(x² + y²)      max_abs = max |x − y|

rel_diff is 0 for identical tensors; since Σ(x−y)² = Σ(x² + y²) − 2Σxy it equals
Σ(x−y)² / Σ(x² + y²), a scale-free squared error (0 ≤ rel_diff ≤ 2),
so sites of different magnitude (embeddings, residual stream, logits) compare on one axis.
The generator's side is `replay` (bench/generation/replay.py): the computation that produced
lp_gen, decode steps with the KV cache when it is on. `first_divergent` is the first site whose
rel_diff exceeds the threshold: where the two computations stop agreeing.
"""
from __future__ import annotations

import torch

from bench.generation.replay import replay


def site_names(n_layers: int) -> list[str]:
    return (["embed"] + [f"layers.{i}.{b}" for i in range(n_layers) for b in ("attn", "mlp")]
            + ["norm", "logits"])


def site_stats(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(rel_diff, max_abs) of x, y [B, N, ...] over positions where mask [B, N] is true."""
    m = mask.bool().to(x.device)
    xs, ys = x[m].double(), y[m].double()
    if xs.numel() == 0:
        return 0.0, 0.0
    den = (xs * xs + ys * ys).sum()
    rel = float(1.0 - 2.0 * (xs * ys).sum() / den) if den > 0 else 0.0
    return rel, float((xs - ys).abs().max())


def compare_sites(trainer_sites: dict, gen_sites: dict, mask: torch.Tensor, n_layers: int,
                  threshold: float = 1e-9) -> dict:
    """{"sites": [{"site", "rel_diff", "max_abs"}, ...] in site order, "first_divergent": str | None}."""
    rows = []
    for name in site_names(n_layers):
        rel, mx = site_stats(trainer_sites[name], gen_sites[name], mask)
        rows.append({"site": name, "rel_diff": rel, "max_abs": mx})
    first = next((r["site"] for r in rows if r["rel_diff"] > threshold), None)
    return {"sites": rows, "first_divergent": first}


@torch.no_grad()
def trainer_sites(model, context, tokens: torch.Tensor, prompt_len: int) -> dict[str, torch.Tensor]:
    """The trainer's sites at the positions that score tokens[:, P:] (one full forward, as the
    trainer scores a rollout): name -> [B, N, ...] fp32."""
    sites: dict = {}
    with context():
        model(tokens[:, :-1], sites=sites)
    return {k: v[:, prompt_len - 1:].float() for k, v in sites.items()}


def attribute(model, context, generator, tokens: torch.Tensor, mask: torch.Tensor, prompt_len: int,
              use_kv_cache: bool, temperature: float, threshold: float = 1e-9) -> dict:
    """One attribution record for a rollout batch (DESIGN §11's attribution.jsonl line, less the step)."""
    ts = trainer_sites(model, context, tokens, prompt_len)
    _, gs = replay(generator, tokens, prompt_len, use_kv_cache, temperature, with_sites=True)
    return compare_sites(ts, gs, mask, len(model.layers), threshold)


def attribution_metrics(record: dict) -> dict:
    """`attrib/<site>/rel_diff` and `attrib/<site>/max_abs` for metrics.jsonl / wandb."""
    out = {}
    for r in record["sites"]:
        out[f"attrib/{r['site']}/rel_diff"] = r["rel_diff"]
        out[f"attrib/{r['site']}/max_abs"] = r["max_abs"]
    return out


def attribute_step(run_dir, step: int, model, context, generator, tokens: torch.Tensor, mask: torch.Tensor,
                   prompt_len: int, rows: int, use_kv_cache: bool, temperature: float, threshold: float) -> dict:
    """In-run attribution of one GRPO step (attribution.interval): the first `rows` rows, the
    batch one generate() call sampled (batch-size-dependent kernels need the same batch), appended
    to run_dir/attribution.jsonl. Returns the `attrib/*` metrics."""
    from bench.core.jsonl import JsonlWriter

    rec = attribute(model, context, generator, tokens[:rows], mask[:rows], prompt_len, use_kv_cache, temperature,
                    threshold)
    w = JsonlWriter(run_dir / "attribution.jsonl")
    w.write({"step": step, **rec})
    w.close()
    return attribution_metrics(rec)
