"""`fp8bench compare`: plots and a markdown/HTML report over runs grouped into variants.

OUT/report.md references PNGs next to it; OUT/report.html is the same document with the PNGs
embedded (base64), so it can be mailed or attached to CI as one file. Curves show, per variant,
the mean over seeds at each logged step with a min–max band across seeds: with the 2–3 seeds a
sweep usually has, min–max shows every seed's spread honestly where a std band would pretend to a
distribution. Steps logged by only some seeds (a diverged seed stops early) are averaged over the
seeds that logged them. Plots whose metrics no run logged are skipped, never drawn empty.

report.md opens with "What precision cost" (verdict.py: Δ accuracy / reward with intervals,
mismatch, events and the gate's verdict per variant, in words); `build` also returns those lines
for the console. Tables: variants (runs, seeds, statuses, event counts), final and best metrics per variant (mean
over seeds whose value is finite; Δ vs the baseline variant), and every run (diverged / failed /
running / unknown runs listed with their status, never dropped).
"""
from __future__ import annotations

import base64
import math
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI runners or over ssh
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from markdown_it import MarkdownIt  # noqa: E402  (ships with rich)

from bench.core import atomic  # noqa: E402
from bench.core.errors import BadInput  # noqa: E402
from bench.core.events import KINDS  # noqa: E402
from bench.report import baseline as bl  # noqa: E402
from bench.report import verdict  # noqa: E402
from bench.report import attribution  # noqa: E402
from bench.report.runs import Run, Variant, group, higher_is_better, load_runs, pick_baseline  # noqa: E402

CURVES = ("train/loss", "rollout/reward_mean", "train/grad_norm")
MISMATCH = ("mismatch/token_mult_prob_error", "mismatch/gen_kl_k3")
IS_STATS = ("is/ess", "is/weight_mean", "is/raw_max", "is/token_masked_frac", "is/seq_masked_frac")
TABLE_METRICS = ("train/loss", "rollout/reward_mean", "mismatch/token_mult_prob_error",
                 "mismatch/gen_kl_k3", "is/ess", "train/grad_norm")
TIMELINE_KINDS = ("overflow", "underflow", "nonfinite", "loss_spike", "grad_spike", "mismatch_spike",
                  "skip_step", "fallback", "halt", "eval_regression")


def fmt(x) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.6g}"


def fmt_delta(x) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:+.6g}"


# --- plots ------------------------------------------------------------------------------------
def _band(runs: list[Run], source: str, metric: str):
    """Steps and mean/min/max over the seeds that logged each step (None when nobody did)."""
    per_run = [dict(zip(*r.series(source, metric))) for r in runs]
    steps = sorted({s for d in per_run for s in d})
    if not steps:
        return None
    m = np.array([[d.get(s, np.nan) for s in steps] for d in per_run])
    ok = np.isfinite(m)
    if not ok.any():
        return None
    cols = ok.any(axis=0)  # a step where every seed is NaN has no mean to draw
    m, x = m[:, cols], np.array(steps)[cols]
    with np.errstate(invalid="ignore"):
        return x, np.nanmean(m, 0), np.nanmin(m, 0), np.nanmax(m, 0)


def _curves(variants: dict[str, Variant], colors, source: str, metrics, title: str, path: Path) -> bool:
    metrics = [m for m in metrics if any(m in r.names(source) for v in variants.values() for r in v.runs)]
    if not metrics:
        return False
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        span = [np.inf, -np.inf]
        for name, var in variants.items():
            band = _band(var.runs, source, metric)
            if band is None:
                continue
            x, mean, lo, hi = band
            span = [min(span[0], np.nanmin(lo)), max(span[1], np.nanmax(hi))]
            ax.plot(x, mean, color=colors[name], lw=1.6, label=f"{name} (n={len(var.runs)})",
                    marker="o" if len(x) <= 30 else None, ms=3)  # sparse evals: show where they were
            if len(var.runs) > 1:
                ax.fill_between(x, lo, hi, color=colors[name], alpha=0.18, lw=0)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("step")
        if span[0] > 0 and span[1] > 100 * span[0]:
            ax.set_yscale("log")  # KLs span decades between bf16 and fp8 generators
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{title} (mean over seeds, band: min–max)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _timeline(variants: dict[str, Variant], path: Path) -> bool:
    """One row per variant, one marker per (kind, step); marker area grows with the count
    (summed over seeds) so a burst of overflows stands out from a single one."""
    counts = {name: Counter((str(e.get("kind")), e.get("step", 0)) for r in v.runs for e in r.events)
              for name, v in variants.items()}
    kinds = [k for k in TIMELINE_KINDS if any(k == kk for c in counts.values() for kk, _ in c)]
    if not kinds:
        return False
    fig, ax = plt.subplots(figsize=(10, 0.7 * len(variants) + 1.8))
    markers = "ov^sDP*Xph"
    for ki, kind in enumerate(kinds):
        label = kind  # one legend entry per kind, on its first row
        for row, name in enumerate(variants):
            pts = [(s, n) for (k, s), n in counts[name].items() if k == kind]
            if pts:
                s, n = np.array(pts, dtype=float).T
                # kinds sit side by side within a variant's row so coincident steps stay visible
                y = np.full_like(s, row) + (ki - (len(kinds) - 1) / 2) * 0.12
                ax.scatter(s, y, s=18 + 14 * np.log2(n), marker=markers[ki % len(markers)], color=f"C{ki}",
                           label=label)
                label = None
    ax.set_yticks(range(len(variants)), list(variants), fontsize=8)
    ax.set_ylim(-0.6, len(variants) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel("step")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("numerics events (marker size: count over seeds)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- tables -----------------------------------------------------------------------------------
def _table(header, rows) -> list[str]:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows] + [""]


def run_final_best(run: Run, metric: str) -> tuple[float, float]:
    """A run's final (last logged, NaN kept) and best (max or min by direction) value."""
    source = "evals" if metric in run.names("evals") else "metrics"
    st = bl.series_stats(run.series(source, metric)[1], ())
    if not st:
        return math.nan, math.nan
    best = st["max"] if higher_is_better(metric) else st["min"]
    return (math.nan if st["final"] is None else st["final"]), (math.nan if best is None else best)


def _statuses(runs: list[Run]) -> str:
    c = Counter(r.status for r in runs)
    return ", ".join(f"{n} {s}" for s, n in sorted(c.items()))


def _mean(xs) -> tuple[float, float, int]:
    a = np.array([x for x in xs if math.isfinite(x)])
    return (float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else math.nan, a.size) if a.size else (math.nan, math.nan, 0)


def table_metrics(runs: list[Run]) -> list[str]:
    evals = sorted({m for r in runs for m in r.names("evals")})
    logged = {m for r in runs for m in r.names("metrics")}
    return evals + [m for m in TABLE_METRICS if m in logged]


def tables(variants: dict[str, Variant], base: str) -> list[str]:
    runs = [r for v in variants.values() for r in v.runs]
    metrics = table_metrics(runs)
    lines = ["## Variants", "", f"Baseline variant: `{base}`. Status counts are per run; `unknown` = no summary.json "
             f"(the run crashed before writing one).", ""]
    rows = []
    for name, v in variants.items():
        ev = Counter(str(e.get("kind")) for r in v.runs for e in r.events)
        evs = ", ".join(f"{k} {ev[k]}" for k in KINDS if ev[k]) or "none"
        rows.append([name + (" (baseline)" if name == base else ""), len(v.runs),
                     ", ".join(str(s) for s in v.seeds), _statuses(v.runs), evs])
    lines += _table(["variant", "runs", "seeds", "status", "events"], rows)

    lines += ["## Final and best metrics", "",
              f"Mean over the seeds with a finite value (n); std across seeds; Δ = variant mean − "
              f"baseline (`{base}`) mean. Best is the max for accuracy/reward/ESS, else the min.", ""]
    rows = []
    for metric in metrics:
        fb = {n: [run_final_best(r, metric) for r in v.runs] for n, v in variants.items()}
        bf, bb = _mean([f for f, _ in fb[base]])[0], _mean([b for _, b in fb[base]])[0]
        for name, v in variants.items():
            fm, fs, n = _mean([f for f, _ in fb[name]])
            bm = _mean([b for _, b in fb[name]])[0]
            rows.append([metric, name, f"{n}/{len(v.runs)}", fmt(fm), fmt(fs), fmt_delta(fm - bf), fmt(bm),
                         fmt_delta(bm - bb)])
    lines += _table(["metric", "variant", "n", "final", "std", "Δ final", "best", "Δ best"], rows)

    lines += ["## Runs", ""]
    rows = []
    for name, v in variants.items():
        for r in v.runs:
            steps = (r.summary or {}).get("steps_completed")
            if steps is None:
                steps = max((m.get("step", 0) for m in r.metrics), default=0)
            rows.append([r.run_name, name, r.seed, r.status, steps] + [fmt(run_final_best(r, m)[0]) for m in metrics])
    lines += _table(["run", "variant", "seed", "status", "steps"] + [f"final {m}" for m in metrics], rows)
    return lines


# --- document ---------------------------------------------------------------------------------
def _html(md_text: str, out: Path) -> str:
    """markdown-it renders the same markdown; images are swapped for base64 data URIs."""
    md = MarkdownIt("commonmark").enable("table")

    def image(renderer, tokens, idx, options, env):
        tok = tokens[idx]
        src = out / tok.attrGet("src")
        tok.attrSet("src", "data:image/png;base64," + base64.b64encode(src.read_bytes()).decode())
        return renderer.image(tokens, idx, options, env)

    md.add_render_rule("image", image)
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
             "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}"
             "img{max-width:100%}code{background:#f3f3f3;padding:0 3px}")
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>fp8bench report</title>"
            f"<style>{style}</style></head><body>\n{md.render(md_text)}</body></html>\n")


def _out_dir(out) -> Path:
    """OUT as a folder that exists; a file (or a path under one) is BadInput, before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"-o {out} is a file; valid: a folder for report.md, report.html and the PNGs")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cannot create report folder {out}: {e.strerror}") from None
    return out


def report(paths_or_runs, out, baseline_variant: str | None = None) -> Path:
    """Write OUT/report.md, OUT/report.html and the PNGs; returns the report.md path."""
    return build(paths_or_runs, out, baseline_variant)[0]


def build(paths_or_runs, out, baseline_variant: str | None = None) -> tuple[Path, list[str]]:
    """`report`, also returning the console lines of its "What precision cost" table."""
    runs = paths_or_runs if all(isinstance(r, Run) for r in paths_or_runs) else load_runs(paths_or_runs)
    variants = group(runs)
    base = pick_baseline(variants, baseline_variant)
    out = _out_dir(out)
    cost = verdict.summarize(variants, base) if len(variants) > 1 else []
    colors = {name: f"C{i % 10}" for i, name in enumerate(variants)}
    evals = sorted({m for r in runs for m in r.names("evals")})
    figures = [
        ("curves.png", "Training curves", lambda p: _curves(variants, colors, "metrics", CURVES, "training", p)),
        ("evals.png", "Evaluation", lambda p: _curves(variants, colors, "evals", evals, "evaluation", p)),
        ("mismatch.png", "Trainer/generator mismatch",
         lambda p: _curves(variants, colors, "metrics", MISMATCH, "trainer/generator mismatch", p)),
        ("is.png", "Importance sampling", lambda p: _curves(variants, colors, "metrics", IS_STATS, "IS weights", p)),
        ("events.png", "Numerics events", lambda p: _timeline(variants, p)),
    ]
    recipes = sorted({r.recipe for r in runs})
    lines = [f"# fp8bench report: {', '.join(recipes)}", "",
             f"{len(runs)} runs in {len(variants)} variants; seeds pooled per variant.", ""]
    if cost:
        lines += verdict.markdown(cost, base)
    lines += verdict.split(variants)
    lines += tables(variants, base)
    lines += ["## Plots", ""]
    drawn = 0
    for fname, title, draw in figures:
        (out / fname).unlink(missing_ok=True)  # a stale PNG from an earlier report must not linger
        if draw(out / fname):
            lines += [f"### {title}", "", f"![{title}]({fname})", ""]
            drawn += 1
    if not drawn:
        lines += ["No plottable metrics were logged.", ""]
    lines += attribution.section(variants, out)  # per variant, when its run dirs hold attribution data
    md_text = "\n".join(lines)
    atomic.write_text(out / "report.md", md_text)
    atomic.write_text(out / "report.html", _html(md_text, out))
    return out / "report.md", (verdict.console(cost, base) if cost else [])
