"""Where disagreement comes from, for one rollout batch of a saved policy (DESIGN §11).

    python -m recipes.attribute init_from=RUN_DIR trainer_precision=bf16 generator_precision=fp8_blockwise

Loads the policy (`init_from`: a pretrain or GRPO run dir, or a checkpoint), samples one batch
(grpo.prompts_per_step x grpo.group_size rollouts of the task's train split) with the configured
generator (generator_precision, generator/kernels, generator.kv_cache_dtype, lm_head_fp32), then
  (a) the per-site rel_diff / max_abs table of trainer vs generator hidden states and a
      layer x site heatmap (attribution_heatmap.png), first_divergent;
  (b) the source ablation (bench/generation/ablation.py): tmpe and gen_kl_k3 of the same tokens rescored
      with each source alone and with all sources but one, sorted, and a bar chart
      (attribution_ablation.png).
Writes attribution.md, attribution.json and the PNGs into run_dir (default
runs/attribute/<run_name>). Every key is a GRPO key (conf/attribute.yaml extends conf/grpo.yaml).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from bench.generation.ablation import ablate
from bench.generation.attribution import attribute
from bench.config.validate import validate
from bench.core.errors import BadInput
from bench.generation import Generator
from bench.models.decoder import Transformer, token_logprobs
from bench.precision.mixed import autocast_context
from bench.precision.plan import apply_precision, plan_precision
from bench.run.entrypoint import check_overrides
from bench.rl.mismatch import mismatch_metrics
from bench.precision.cpu_gemm import half_gemm_mode, resolve as resolve_half_gemm
from bench.rl.warmstart import load_policy_weights
from bench.tasks.tokenizer import EOS


def run(cfg) -> dict:
    if not cfg.init_from:
        raise BadInput("init_from is not set; valid: a pretrain/GRPO run dir or a checkpoint file (init_from=PATH)")
    if not Path(cfg.init_from).exists():
        raise BadInput(f"init_from={cfg.init_from} does not exist; valid: a pretrain/GRPO run dir or a checkpoint file")
    checked = validate(cfg, "grpo")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # The half GEMMs a GRPO run on this host computes (bench/precision/cpu_gemm.py), so the table
    # attributes the disagreement of the runs it explains.
    with half_gemm_mode(cfg.cpu_half_gemm, checked.device):
        result = one_batch(cfg, checked)
    return {**result, "half_gemm": resolve_half_gemm(cfg.cpu_half_gemm, checked.device)}


def one_batch(cfg, checked) -> dict:
    """Sample one batch with the configured generator; the per-site table and the source ablation."""
    task, device, g = checked.task, checked.device, cfg.grpo
    model = Transformer(checked.model).to(device)
    load_policy_weights(model, cfg.init_from)
    plan, engine = plan_precision(model, cfg.trainer_precision, device)
    apply_precision(model, plan, engine)
    model.lm_head_fp32 = cfg.lm_head_fp32
    model.eval()
    context = lambda: autocast_context(plan.name, device)
    gen = Generator(checked.model, cfg.generator_precision, device, kv_cache_dtype=cfg.generator.kv_cache_dtype,
                    kv_cache_headroom=cfg.generator.kv_cache_headroom, kernels=cfg.generator.kernels,
                    lm_head_fp32=cfg.lm_head_fp32)
    gen.refit(model)
    problems = [q for q in task.problems("train", g.prompts_per_step, cfg.seed) for _ in range(g.group_size)]
    prompts = task.encode_prompts(problems).to(device)
    rng = torch.Generator(device=device).manual_seed(cfg.seed)
    n = g.max_new_tokens or task.seq_len - task.prompt_len
    ro = gen.generate(prompts, n, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, eos_id=EOS,
                      generator=rng, use_kv_cache=cfg.generator.use_kv_cache)
    P, T = prompts.shape[1], g.temperature if g.temperature > 0 else 1.0
    with torch.no_grad(), context():
        lp_t = token_logprobs(model(ro.tokens[:, :-1])[:, P - 1:], ro.tokens[:, P:], T)
    mm = mismatch_metrics(ro.logprobs_untruncated, lp_t, ro.response_mask)
    sites = attribute(model, context, gen, ro.tokens, ro.response_mask, P, cfg.generator.use_kv_cache, T,
                      cfg.attribution.threshold)
    abl = ablate(checked.model, model, device, ro.tokens, ro.response_mask, P, lp_t, cfg.generator_precision,
                 cfg.generator.kernels, gen.kv_fp8, gen.plan.fp8_modules, cfg.generator.use_kv_cache, T,
                 cfg.lm_head_fp32, cfg.generator.kv_cache_headroom)
    return {"init_from": str(cfg.init_from), "trainer_precision": plan.name, "generator_precision": gen.name,
            "kernels": OmegaConf.to_container(cfg.generator.kernels), "lm_head_fp32": bool(cfg.lm_head_fp32),
            "use_kv_cache": bool(cfg.generator.use_kv_cache), "kv_cache_dtype": cfg.generator.kv_cache_dtype,
            "rollouts": int(ro.tokens.shape[0]), "valid_tokens": int(ro.response_mask.sum()),
            "mismatch": {"tmpe": mm["mismatch/token_mult_prob_error"], "gen_kl_k3": mm["mismatch/gen_kl_k3"]},
            **sites, "ablation": abl}


def heatmap(result: dict, path: Path) -> None:
    """log10 rel_diff, layers down, (attn, mlp) across; embed/norm/logits in the title."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = {r["site"]: r["rel_diff"] for r in result["sites"]}
    n = sum(1 for s in rows if s.endswith(".attn"))
    grid = np.array([[rows[f"layers.{i}.{b}"] for b in ("attn", "mlp")] for i in range(n)])
    fig, ax = plt.subplots(figsize=(3.6, 1 + 0.45 * n))
    im = ax.imshow(np.log10(np.maximum(grid, 1e-18)), aspect="auto", cmap="viridis")
    ax.set_xticks([0, 1], ["attn", "mlp"])
    ax.set_yticks(range(n), [f"layer {i}" for i in range(n)])
    ax.set_title(f"log10 rel_diff  (embed {rows['embed']:.1e}, logits {rows['logits']:.1e})", fontsize=7)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bars(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["ablation"]["rows"]
    fig, ax = plt.subplots(figsize=(6, 1 + 0.35 * max(1, len(rows))))
    names = [r["source"] for r in rows][::-1]
    ax.barh(names, [r["alone"]["tmpe"] - 1 for r in rows][::-1], label="alone: tmpe − 1", alpha=0.7)
    ax.barh(names, [result["ablation"]["all"]["tmpe"] - r["all_but"]["tmpe"] for r in rows][::-1],
            label="all − all_but (drop)", alpha=0.7)
    ax.set_xlabel("token_mult_prob_error difference")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict) -> str:
    a = result["ablation"]
    lines = [f"# Attribution: trainer {result['trainer_precision']} vs generator {result['generator_precision']}", "",
             f"init_from `{result['init_from']}`, {result['rollouts']} rollouts, {result['valid_tokens']} valid tokens, "
             f"KV cache {'on' if result['use_kv_cache'] else 'off'} ({result['kv_cache_dtype']}), "
             f"lm_head_fp32 {result['lm_head_fp32']}", "",
             f"tmpe {result['mismatch']['tmpe']:.6f}, gen_kl_k3 {result['mismatch']['gen_kl_k3']:.3e}; "
             f"first divergent site: `{result['first_divergent']}`", "",
             "![heatmap](attribution_heatmap.png)", "", "| site | rel_diff | max_abs |", "|---|---|---|"]
    lines += [f"| {r['site']} | {r['rel_diff']:.3e} | {r['max_abs']:.3e} |" for r in result["sites"]]
    lines += ["", "## Source ablation", "",
              f"all sources: tmpe {a['all']['tmpe']:.6f}, gen_kl_k3 {a['all']['gen_kl_k3']:.3e}; none: tmpe "
              f"{a['none']['tmpe']:.6f}, gen_kl_k3 {a['none']['gen_kl_k3']:.3e}", "",
              "| source | share | alone tmpe | alone gen_kl_k3 | all-but tmpe | all-but gen_kl_k3 |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['source']} | {r['share']:.1%} | {r['alone']['tmpe']:.6f} | {r['alone']['gen_kl_k3']:.3e} | "
              f"{r['all_but']['tmpe']:.6f} | {r['all_but']['gen_kl_k3']:.3e} |" for r in a["rows"]]
    lines += ["", "share = (tmpe(all) − tmpe(all but the source)) / Σ over sources (negative drops count 0).", "",
              "![ablation](attribution_ablation.png)", ""]
    return "\n".join(lines)


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "attribution.json").write_text(json.dumps(result, indent=1))
    heatmap(result, out / "attribution_heatmap.png")
    bars(result, out / "attribution_ablation.png")
    (out / "attribution.md").write_text(markdown(result))


@hydra.main(config_path="../conf", config_name="attribute", version_base="1.3")
def main(cfg) -> None:
    try:
        result = run(cfg)
    except BadInput as e:
        print(f"fp8bench: error: {e}", file=sys.stderr)
        sys.exit(2)
    write(result, Path(cfg.run_dir))
    print(markdown(result).split("\n## Source ablation")[0].splitlines()[4])
    print(f"wrote {cfg.run_dir}/attribution.md")


if __name__ == "__main__":
    check_overrides("grpo")
    main()
