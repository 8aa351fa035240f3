"""The report's attribution section: per variant, where trainer and generator part ways.

Two sources, each shown when a variant's run dirs hold it:
  attribution.jsonl  in-run attribution (attribution.interval): a site x step heatmap of
                     log10 rel_diff (the variant's first run holding one), and first_divergent
  attribution.json   `python -m recipes.attribute` output written into the run dir (or into its
                     `attribution/` subfolder): the source-ablation table, sorted by share
"""
from __future__ import annotations

import json
from pathlib import Path


def _jsonl(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line of a crashed run
    return out


def _find(runs, names: tuple[str, ...]) -> Path | None:
    for r in runs:
        for n in names:
            p = Path(r.path) / n
            if p.is_file():
                return p
    return None


def _heatmap(records: list[dict], title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sites = [s["site"] for s in records[0]["sites"]]
    grid = np.array([[s["rel_diff"] for s in r["sites"]] for r in records]).T
    fig, ax = plt.subplots(figsize=(1.5 + 0.35 * len(records), 0.8 + 0.25 * len(sites)))
    im = ax.imshow(np.log10(np.maximum(grid, 1e-18)), aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(sites)), sites, fontsize=6)
    ax.set_xticks(range(len(records)), [str(r["step"]) for r in records], fontsize=6)
    ax.set_xlabel("step")
    ax.set_title(f"{title}: log10 rel_diff", fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(variants: dict, out: Path) -> list[str]:
    """Markdown lines (empty when no variant holds attribution data); writes attrib_<i>.png."""
    lines = []
    for i, (name, v) in enumerate(variants.items()):
        runs = v.runs if hasattr(v, "runs") else v
        png = out / f"attrib_{i}.png"
        png.unlink(missing_ok=True)
        jl = _find(runs, ("attribution.jsonl",))
        recs = _jsonl(jl) if jl else []
        aj = _find(runs, ("attribution.json", "attribution/attribution.json"))
        if not recs and aj is None:
            continue
        lines += [f"### {name}", ""]
        if recs:
            _heatmap(recs, name, png)
            firsts = sorted({str(r["first_divergent"]) for r in recs})
            lines += [f"In-run attribution ({jl.parent.name}, {len(recs)} steps); first divergent site: "
                      f"{', '.join(firsts)}", "", f"![attribution {name}]({png.name})", ""]
        if aj is not None:
            a = json.loads(aj.read_text())["ablation"]
            lines += [f"Source ablation ({aj.parent.name}): all sources tmpe {a['all']['tmpe']:.6f}, none "
                      f"{a['none']['tmpe']:.6f}", "", "| source | share | alone tmpe | all-but tmpe |", "|---|---|---|---|"]
            lines += [f"| {r['source']} | {r['share']:.1%} | {r['alone']['tmpe']:.6f} | {r['all_but']['tmpe']:.6f} |"
                      for r in a["rows"]]
            lines.append("")
    return (["## Where disagreement comes from (attribution)", ""] + lines) if lines else []
