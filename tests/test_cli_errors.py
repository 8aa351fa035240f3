"""Bad input to `fp8bench compare | gate | baseline record`: one line on stderr, exit 2, no traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runfixtures import cli, write_matrix, write_run

REPO = Path(__file__).resolve().parents[1]


def one_line_error(capsys, *args) -> str:
    code = cli(*args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fp8bench: error: "), err
    return lines[0]


@pytest.fixture
def runs(tmp_path):
    write_matrix(tmp_path / "runs", [dict(precision="bf16")], seeds=(0, 1))
    return tmp_path / "runs"


def rules(tmp_path, body: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(body)
    return path


def test_missing_run_dir(capsys, tmp_path):
    msg = one_line_error(capsys, "compare", tmp_path / "nope")
    assert "nope" in msg and "does not exist" in msg and "valid:" in msg
    msg = one_line_error(capsys, "gate", "--baseline", tmp_path / "nope", tmp_path / "nope")
    assert "nope" in msg


def test_no_run_dirs_found(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no run dirs found" in one_line_error(capsys, "compare", tmp_path / "empty")
    assert "no path matches" in one_line_error(capsys, "baseline", "record", str(tmp_path / "x*"), "-o", tmp_path / "b.json")


def test_unreadable_json(capsys, runs, tmp_path):
    bad = next(runs.iterdir())
    (bad / "summary.json").write_text("{not json")
    msg = one_line_error(capsys, "compare", runs)
    assert "unreadable JSON" in msg and "summary.json" in msg
    (bad / "summary.json").unlink()
    (bad / "metrics.jsonl").write_text('{"step": 1}\n{oops\n{"step": 3}\n')
    assert "metrics.jsonl line 2" in one_line_error(capsys, "compare", runs)


def test_unreadable_baseline(capsys, runs, tmp_path):
    (tmp_path / "b.json").write_text("[1, 2")
    assert "unreadable JSON in baseline" in one_line_error(capsys, "gate", "--baseline", tmp_path / "b.json", runs)
    (tmp_path / "b.json").write_text('{"some": "json"}')
    assert "not an fp8bench baseline" in one_line_error(capsys, "gate", "--baseline", tmp_path / "b.json", runs)
    assert "cannot read baseline" in one_line_error(capsys, "gate", "--baseline", tmp_path / "missing.json", runs)


def test_unknown_metric(capsys, runs, tmp_path):
    r = rules(tmp_path, "rules:\n  - {metric: eval/addition/acuracy, bound: max_drop, value: 0.05}\n")
    msg = one_line_error(capsys, "gate", "--baseline", runs, "--rules", r, runs)
    assert "'eval/addition/acuracy'" in msg and "valid: eval/addition/accuracy" in msg
    r = rules(tmp_path, "rules:\n  - {metric: rollout/*, bound: max_drop, value: 0.05}\n")
    assert "'rollout/*' was logged by no run" in one_line_error(capsys, "gate", "--baseline", runs, "--rules", r, runs)


@pytest.mark.parametrize("body, expect", [
    ("rules: [\n", "malformed YAML"),
    ("rules: 3\n", "non-empty `rules:` list"),
    ("rules:\n  - 7\n", "expected a mapping"),
    ("rules:\n  - {metric: train/loss, bound: max_drop}\n", "missing `value`"),
    ("rules:\n  - {metric: train/loss, bound: max_drop, value: lots}\n", "must be numbers"),
    ("rules:\n  - {metric: train/loss, stat: last, bound: max_drop, value: 1}\n", "unknown stat 'last'; valid: final, best"),
    ("rules:\n  - {metric: train/loss, bound: at_most, value: 1}\n", "unknown bound 'at_most'; valid: abs_min"),
    ("rules:\n  - {metric: train/loss, value: 1}\n", "missing `bound`"),
    ("rules:\n  - {metric: train/loss, source: wandb, bound: abs_max, value: 1}\n", "unknown source 'wandb'"),
    ("rules:\n  - {stat: event_count, kind: overflows, bound: abs_max, value: 1}\n", "unknown event kind 'overflows'"),
    ("rules:\n  - {metric: train/loss, bounds: abs_max, value: 1}\n", "unknown key 'bounds'"),
    ("rules:\n  - {check: run_status, allowed: [done]}\n", "unknown status 'done'"),
    ("rules:\n  - {metric: train/loss, stat: median, source: summary, bound: abs_max, value: 1}\n",
     "unknown stat for source summary 'median'; valid: final, best"),
])
def test_malformed_rules(capsys, runs, tmp_path, body, expect):
    r = rules(tmp_path, body)
    msg = one_line_error(capsys, "gate", "--baseline", runs, "--rules", r, runs)
    assert expect in msg and "rules.yaml" in msg or expect in msg


def test_baseline_lacks_window(capsys, runs, tmp_path):
    assert cli("baseline", "record", runs, "-o", tmp_path / "b.json") == 0
    r = rules(tmp_path, "rules:\n  - {metric: train/loss, stat: mean_last_k, k: 3, bound: rel_increase, value: 0.1}\n")
    assert "no mean_last_3" in one_line_error(capsys, "gate", "--baseline", tmp_path / "b.json", "--rules", r, runs)


def test_other_bad_choices(capsys, runs, tmp_path):
    assert "unknown baseline variant 'fp9'; valid: 'bf16'" in one_line_error(
        capsys, "compare", runs, "-o", tmp_path / "o", "--baseline-variant", "fp9")
    assert "cannot read rules file" in one_line_error(
        capsys, "gate", "--baseline", runs, "--rules", tmp_path / "none.yaml", runs)
    write_run(tmp_path / "mixed", recipe="grpo")
    write_run(tmp_path / "mixed", precision="bf16")
    assert "mix recipes grpo, pretrain" in one_line_error(capsys, "gate", "--baseline", runs, tmp_path / "mixed")
    assert "baseline is of recipe 'pretrain', runs are ['grpo']" in one_line_error(
        capsys, "gate", "--baseline", runs, tmp_path / "mixed" / "bf16-bf16-none_addition_s0")
    assert "--baseline" in one_line_error(capsys, "gate", runs)  # argparse errors: one line too
    assert "--alpha" in one_line_error(capsys, "gate", "--baseline", runs, "--alpha", "2", runs)


def test_subprocess_bad_input_and_pass(runs, tmp_path):
    r = rules(tmp_path, "rules:\n  - {metric: train/loss, stat: final, bound: max_dro, value: 1}\n")
    cmd = [sys.executable, "-m", "bench.cli", "gate", "--baseline", str(runs), "--rules", str(r), str(runs)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        f"fp8bench: error: {r} rule 1: unknown bound 'max_dro'; valid: abs_min, abs_max, rel_drop, max_drop, "
        f"max_increase, rel_increase"]
    junit = tmp_path / "g.xml"
    p = subprocess.run(cmd[:6] + ["--test", "welch", "--junit", str(junit), str(runs)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "precision gate: PASS" in p.stdout and junit.is_file()
