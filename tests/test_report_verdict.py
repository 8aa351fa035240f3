"""`fp8bench compare`: the "What precision cost" verdict, variant names on mixed runs, and the
report/baseline bad inputs of issue 12 (one line, exit 2)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from bench.report import runs as rr
from runfixtures import cli, write_matrix, write_run


def one_line_error(capsys, *args) -> str:
    assert cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fp8bench: error: "), err
    return err[0]


@pytest.fixture
def grpo(tmp_path):
    """A GRPO matrix: bf16/bf16, an fp8 generator (small cost), the same with TIS, 3 seeds each."""
    root = tmp_path / "m"
    write_matrix(root, [dict(recipe="grpo"), dict(recipe="grpo", generator="fp8_blockwise", acc_drop=0.2),
                        dict(recipe="grpo", generator="fp8_blockwise", is_mode="tis", acc_drop=0.05)],
                 noise=0.005)
    return root


def _final_acc(root, pattern):
    vals = []
    for p in sorted(root.glob(pattern)):
        rows = [json.loads(x) for x in (p / "evals.jsonl").read_text().splitlines() if x.strip()]
        vals.append(rows[-1]["eval/addition/accuracy"])
    return np.array(vals)


def test_report_opens_with_what_precision_cost(grpo, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli("compare", grpo, "-o", out) == 0
    md = (out / "report.md").read_text()
    first = md.split("## ")[1]
    assert first.startswith("What precision cost")
    rows = {ln.split(" | ")[0].lstrip("| "): ln.split(" | ") for ln in first.splitlines() if ln.startswith("| bf16/")}
    assert set(rows) == {"bf16/fp8_blockwise", "bf16/fp8_blockwise is=tis"}
    # Δ acc ± the 90% Welch interval, against a float64 computation from the run files
    c, b = _final_acc(grpo, "bf16-fp8_blockwise-none_*"), _final_acc(grpo, "bf16-bf16-none_*")
    a1, a2 = c.var(ddof=1) / 3, b.var(ddof=1) / 3
    df = (a1 + a2) ** 2 / (a1 * a1 / 2 + a2 * a2 / 2)
    want = f"{c.mean() - b.mean():+.3f} ± {sps.t.ppf(0.95, df) * np.sqrt(a1 + a2):.3f}"
    assert rows["bf16/fp8_blockwise"][1] == want
    assert "regression" in rows["bf16/fp8_blockwise"][-1]
    tis = rows["bf16/fp8_blockwise is=tis"][-1]
    assert "IS recovers" in tis and "%" in tis
    printed = capsys.readouterr().out.splitlines()
    assert printed[-3].startswith("What precision cost (vs bf16/bf16)")
    assert printed[-2].startswith("  bf16/fp8_blockwise: regression")


def test_report_verdict_in_words_for_a_free_variant(tmp_path, capsys):
    root = tmp_path / "p"
    write_matrix(root, [dict(precision="bf16"), dict(precision="fp8_tensorwise")], seeds=(0, 1, 2, 3, 4),
                 noise=0.002)
    assert cli("compare", root, "-o", tmp_path / "o") == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("  fp8_tensorwise: no measurable cost (n=5, Δacc ")


def test_mixed_runs_are_named_by_the_keys_that_differ(tmp_path):
    root = tmp_path / "mixed"
    write_run(root, precision="bf16", steps=100)
    write_run(root, precision="bf16", steps=50, name="short")
    write_run(root, recipe="grpo", steps=100, extra_config={"grpo": {"group_size": 8, "eps_low": 0.2,
                                                                     "temperature": 1.0, "top_k": 0}})
    names = list(rr.group(rr.load_runs([root])))
    assert sorted(names) == ["bf16 steps=100", "bf16 steps=50", "bf16/bf16 steps=100"]


def test_compare_out_that_is_a_file_is_one_line(grpo, tmp_path, capsys):
    f = tmp_path / "report.txt"
    f.write_text("x")
    assert "is a file" in one_line_error(capsys, "compare", grpo, "-o", f)
    assert "cannot create report folder" in one_line_error(capsys, "compare", grpo, "-o", f / "sub")


def test_baseline_record_needs_summary_json(tmp_path, capsys):
    write_run(tmp_path / "r", precision="bf16", summary=False)
    msg = one_line_error(capsys, "baseline", "record", tmp_path / "r", "-o", tmp_path / "b.json")
    assert "no summary.json" in msg and not (tmp_path / "b.json").exists()
    write_run(tmp_path / "d", precision="bf16", status="diverged")
    assert "status 'diverged'" in one_line_error(capsys, "baseline", "record", tmp_path / "d", "-o", tmp_path / "b.json")
    write_run(tmp_path / "ok", precision="bf16")
    assert "is a directory" in one_line_error(capsys, "baseline", "record", tmp_path / "ok", "-o", tmp_path)


def test_no_recovery_share_is_claimed_for_a_drop_inside_the_noise(tmp_path):
    """A ratio of two noise-sized deltas ("IS recovers -350%") means nothing: the share is only
    given when the uncorrected variant's interval lies below zero."""
    root = tmp_path / "m"
    write_matrix(root, [dict(recipe="grpo"), dict(recipe="grpo", generator="fp8_blockwise", acc_drop=0.002),
                        dict(recipe="grpo", generator="fp8_blockwise", is_mode="tis", acc_drop=0.01)],
                 noise=0.05)
    out = tmp_path / "out"
    assert cli("compare", root, "-o", out) == 0
    assert "IS recovers" not in (out / "report.md").read_text()
