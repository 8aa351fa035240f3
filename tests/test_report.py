"""fp8bench compare: run discovery, variant grouping, report.md / report.html and the PNGs."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from bench.core.errors import BadInput
from bench.report import runs as rr
from runfixtures import cli, write_matrix, write_run

IMG = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def md_table(md: str, heading: str) -> list[dict]:
    """Parse the first markdown table after `## heading` back into dicts."""
    lines = md.split(f"## {heading}\n", 1)[1].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    rows = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", ln)[1:-1]])
    header, body = rows[0], rows[2:]
    return [dict(zip(header, r)) for r in body]


def num(s: str) -> float:
    return math.nan if s == "—" else float(s)


def close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9)


def last(path, fname, key):
    rows = [json.loads(ln) for ln in (path / fname).read_text().splitlines() if ln.strip()]
    vals = [r[key] for r in rows if key in r]
    return math.nan if not vals or vals[-1] is None else vals[-1]


@pytest.fixture
def sweep(tmp_path):
    """A pretrain sweep: bf16 and fp8_tensorwise x 3 seeds (fp8 with overflows, some runs nested
    two levels deep), a diverged fp8_delayed run and an fp8_rowwise run without summary.json."""
    root = tmp_path / "sweep"
    write_matrix(root, [dict(precision="bf16")])
    write_matrix(root / "more" / "deeper", [dict(precision="fp8_tensorwise", overflow_events=3, acc_drop=0.05)])
    write_run(root, precision="fp8_delayed", diverge_at=80, status="diverged", nonfinite_events=1)
    write_run(root, precision="fp8_rowwise", summary=False)
    return root


def test_compare_report(sweep, tmp_path):
    out = tmp_path / "out"
    assert cli("compare", sweep, "-o", out) == 0
    md = (out / "report.md").read_text()
    images = IMG.findall(md)
    assert images and all((out / i).is_file() for i in images)
    assert {"curves.png", "evals.png", "events.png"} <= set(images)
    # pretrain runs log no mismatch or IS metrics: those plots are skipped, not referenced
    assert "mismatch.png" not in md and not (out / "mismatch.png").exists() and "is.png" not in md

    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(images)
    assert not any(f'src="{i}"' in html for i in images)

    runs = {r.run_name: r for r in rr.load_runs([sweep])}
    table = md_table(md, "Runs")
    assert len(table) == len(runs) == 8
    for row in table:
        run = runs[row["run"]]
        assert row["status"] == run.status
        for col, v in row.items():
            if col.startswith("final "):
                metric = col[len("final "):]
                fname = "evals.jsonl" if metric.startswith("eval/") else "metrics.jsonl"
                assert close(num(v), last(run.path, fname, metric)), (row["run"], col)
    status = {r["run"]: r["status"] for r in table}
    assert status["fp8_delayed_addition_s0"] == "diverged"
    assert status["fp8_rowwise_addition_s0"] == "unknown"  # no summary.json: shown, not dropped


def test_compare_variant_table_deltas(sweep, tmp_path):
    out = tmp_path / "out"
    assert cli("compare", sweep, "-o", out) == 0
    md = (out / "report.md").read_text()
    variants = md_table(md, "Variants")
    assert variants[0]["variant"] == "bf16 (baseline)"
    by = {v["variant"].replace(" (baseline)", ""): v for v in variants}
    assert by["fp8_tensorwise"]["events"] == "overflow 9"
    assert by["fp8_delayed"]["status"] == "1 diverged"

    runs = rr.load_runs([sweep])
    metric = "eval/addition/accuracy"
    finals = {}
    for r in runs:
        finals.setdefault(r.label, []).append(last(r.path, "evals.jsonl", metric))
    rows = {r["variant"]: r for r in md_table(md, "Final and best metrics") if r["metric"] == metric}
    base = np.mean(finals["bf16"])
    for name, vals in finals.items():
        assert close(num(rows[name]["final"]), float(np.mean(vals)))
        assert close(num(rows[name]["Δ final"]), float(np.mean(vals) - base))
    assert num(rows["fp8_tensorwise"]["Δ final"]) < 0  # its accuracy was lowered
    assert rows["fp8_delayed"]["n"] == "1/1"
    loss = {r["variant"]: r for r in md_table(md, "Final and best metrics") if r["metric"] == "train/loss"}
    assert loss["fp8_delayed"]["n"] == "0/1" and loss["fp8_delayed"]["final"] == "—"  # ended NaN


def test_compare_baseline_variant_override(sweep, tmp_path):
    out = tmp_path / "out"
    assert cli("compare", sweep, "-o", out, "--baseline-variant", "fp8_tensorwise") == 0
    md = (out / "report.md").read_text()
    rows = [r for r in md_table(md, "Final and best metrics") if r["variant"] == "fp8_tensorwise"]
    assert all(r["Δ final"] in ("+0", "—") for r in rows)


def test_compare_grpo_plots_and_labels(tmp_path):
    root = tmp_path / "grpo"
    write_matrix(root, [dict(recipe="grpo", generator="fp8_blockwise", is_mode="tis"), dict(recipe="grpo"),
                        dict(recipe="grpo", generator="fp8_blockwise")], seeds=(0, 1))
    assert cli("compare", root) == 0  # default OUT: the sweep dir itself
    md = (root / "report.md").read_text()
    images = IMG.findall(md)
    assert {"curves.png", "evals.png", "mismatch.png", "is.png"} <= set(images)
    assert "events.png" not in images and not (root / "events.png").exists()  # no events logged
    names = [v["variant"] for v in md_table(md, "Variants")]
    assert names == ["bf16/bf16 (baseline)", "bf16/fp8_blockwise", "bf16/fp8_blockwise is=tis"]


def test_variant_keys_split_only_on_real_knobs(tmp_path):
    write_run(tmp_path, precision="bf16", seed=0)
    write_run(tmp_path, precision="fp8_tensorwise", seed=0)
    write_run(tmp_path, precision="fp8_tensorwise", seed=1, name="lr", extra_config={"optim": {"lr": 1e-4}})
    write_run(tmp_path, precision="fp8_tensorwise", seed=2, name="eng",
              extra_config={"precision": {"name": "fp8_tensorwise", "engine": "torchao", "scaling": "tensorwise"}})
    runs = rr.load_runs([tmp_path])
    # precision.scaling exists only for fp8 (part of choosing the recipe): no split on it;
    # optim.lr differs across runs and precision.engine within fp8_tensorwise: both split.
    assert rr.variant_keys(runs) == [("optim", "lr"), ("precision", "engine")]
    names = set(rr.group(runs))
    assert "fp8_tensorwise optim.lr=0.0001 precision.engine=reference" in names
    assert "fp8_tensorwise optim.lr=<unset> precision.engine=torchao" in names
    assert len(names) == 4


def test_seeds_pool_into_one_variant(tmp_path):
    write_matrix(tmp_path, [dict(precision="bf16"), dict(precision="fp8_rowwise")], seeds=(0, 1, 2))
    variants = rr.group(rr.load_runs([tmp_path]))
    assert list(variants) == ["bf16", "fp8_rowwise"]
    assert [v.seeds for v in variants.values()] == [[0, 1, 2], [0, 1, 2]]
    assert rr.pick_baseline(variants) == "bf16"


def test_discovery_globs_and_truncated_tail(tmp_path):
    a = write_run(tmp_path / "s", precision="bf16", seed=0)
    write_run(tmp_path / "s", precision="bf16", seed=1)
    assert rr.discover([str(tmp_path / "s" / "*s0")]) == [a.resolve()]
    assert len(rr.discover([tmp_path])) == 2
    # a crash mid-write leaves half a last line: that step is dropped, the run still loads
    with open(a / "metrics.jsonl", "a") as f:
        f.write('{"step": 110, "train/lo')
    assert rr.load_run(a).metrics[-1]["step"] == 100
    (a / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(BadInput, match="line 2"):
        rr.load_run(a)
