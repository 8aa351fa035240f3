"""README.md's claims match the code (conf/matrix, scripts/run.sh, conf/) and its measured numbers
are those scripts/readme_numbers.py recorded (baselines/readme_numbers.json): the main job's line,
and every number an example's comment quotes (the drift test)."""
from __future__ import annotations

import json
import re
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from readme_blocks import Command, readme_blocks  # noqa: E402
from readme_examples import quoted  # noqa: E402

README = (ROOT / "README.md").read_text()
RUN_SH = (ROOT / "scripts" / "run.sh").read_text()
NUMBERS_FILE = ROOT / "baselines" / "readme_numbers.json"
NUMBERS = json.loads(NUMBERS_FILE.read_text()) if NUMBERS_FILE.is_file() else {}


def main_job_line() -> str:
    return next(ln for ln in README.splitlines() if ln.startswith("scripts/run.sh ") and "main job" in ln)


def run_sh_branch(host_class: str) -> dict:
    """The seeds, steps and cells run.sh picks on HOST_CLASS (its `case "$HOST_CLASS"` branches)."""
    pat = r"avx2\)" if host_class == "avx2" else r"\*\)"
    m = re.search(pat + r"\s+seeds_default=([\d,]+); steps_default=(\d+); cells='\+matrix=([^']+)'", RUN_SH)
    assert m, f"run.sh has no {host_class} branch of the expected shape"
    all_cells = sorted(p.stem for p in (ROOT / "conf" / "matrix").glob("*.yaml"))
    cells = all_cells if m.group(3) == "glob(*)" else m.group(3).split(",")
    assert set(cells) <= set(all_cells), cells
    return {"seeds": m.group(1).split(","), "steps": int(m.group(2)), "cells": cells}


def test_the_main_job_line_names_the_cells_seeds_and_steps_run_sh_runs():
    line = main_job_line()
    claims = re.findall(r"(\d+) cells x (\d+) seeds x (\d+) steps", line)
    assert len(claims) == 2 and "AVX2-only CPUs:" in line.split(claims[1][0] + " cells")[0], line
    for (cells, seeds, steps), host in zip(claims, ("avx512_bf16", "avx2")):
        b = run_sh_branch(host)
        assert (int(cells), int(seeds), int(steps)) == (len(b["cells"]), len(b["seeds"]), b["steps"]), host


@pytest.mark.skipif("main_job" not in NUMBERS, reason="no main-job measurement recorded yet (scripts/readme_numbers.py)")
def test_the_recorded_measurement_is_of_the_matrix_the_code_runs():
    """Any figure quoted from the measurement must be of the matrix run.sh runs today on that host class."""
    n = NUMBERS["main_job"]
    assert n["host_class"] in ("avx512_bf16", "avx2", "cuda") and n["commit"]
    b = run_sh_branch(n["host_class"])
    assert len(n["cells"]) == len(b["cells"]) and n["steps"] == [b["steps"]] and len(n["seeds"]) == len(b["seeds"])


@pytest.mark.skipif("main_job" not in NUMBERS, reason="no main-job measurement recorded yet (scripts/readme_numbers.py)")
def test_the_main_job_paragraph_quotes_the_recorded_measurement():
    n = NUMBERS["main_job"]
    para = README.split(main_job_line())[1].split("\n\n")[0].split("```")[1]
    assert f"Measured on {n['host_class']}, commit {n['commit']}" in para
    assert f"the matrix ran in {n['wall_s'] / 60:.1f} min after set-up" in para
    assert f"rose {n['control_acc_start']:.3f} -> {n['control_acc_end']:.3f} (mean of {len(n['seeds'])} seeds)" in para


def test_the_sweeps_section_names_the_launcher_run_sh_passes():
    launcher = re.search(r"hydra/launcher=(\w+)", RUN_SH).group(1)
    sweeps = README.split("## Sweeps")[1].split("\n## ")[0]
    assert f"hydra/launcher={launcher}" in sweeps
    assert set(re.findall(r"hydra/launcher=(\w+)", sweeps)) == {launcher}
    assert (ROOT / "conf" / "hydra" / "launcher" / f"{launcher}.yaml").is_file()


def test_matrix_info_reports_what_ran_and_the_controls_mean_rise(tmp_path):
    import subprocess
    import sys

    import yaml

    for cell, seed, accs in [(("bf16", "bf16", "none"), 0, (0.70, 0.80)), (("bf16", "bf16", "none"), 1, (0.60, 0.65)),
                             (("bf16", "fp8_blockwise", "tis"), 0, (0.70, 0.10))]:
        d = tmp_path / "runs" / f"{'-'.join(cell)}-{seed}"
        d.mkdir(parents=True)
        cfg = {"trainer_precision": {"name": cell[0]}, "generator_precision": {"name": cell[1]},
               "is_correction": {"mode": cell[2]}, "seed": seed, "steps": 60}
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        (d / "evals.jsonl").write_text(f'{{"step": 0, "eval/reversal/accuracy": {accs[0]}}}\n'
                                       f'{{"step": 60, "eval/reversal/accuracy": {accs[1]}}}\n')
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "matrix_info.py"), str(tmp_path), "avx2", "AVX2", "330"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["cells"] == ["bf16/bf16/none", "bf16/fp8_blockwise/tis"] and info["seeds"] == [0, 1]
    assert abs(info["control_acc_start"] - 0.65) < 1e-12 and abs(info["control_acc_end"] - 0.725) < 1e-12
    assert "2 cells x 2 seeds x 60 steps in 5.5 min" in r.stdout and "0.650 -> 0.725" in r.stdout
    assert "a rise of +0.075." in r.stdout and "CPU emulation costs on this host" in r.stdout


# --- the examples' numbers (drift test) --------------------------------------------------------

def examples_record() -> dict:
    assert "examples" in NUMBERS, "no examples measurement: run `python scripts/readme_numbers.py examples`"
    return NUMBERS["examples"]


def within_rounding(text: str, value) -> bool:
    """`text` is `value` rounded to the decimals text shows (0.755 covers [0.7545, 0.7555])."""
    decimals = len(text.partition(".")[2])
    return value is not None and abs(float(text) - value) <= 0.5 * 10 ** -decimals + 1e-9


def drift(commands: list[Command], records: dict) -> list[str]:
    """Every way the README's example comments disagree with the recorded measurement."""
    problems = []
    for c in commands:
        rec = records.get(c.text)
        if rec is None:
            problems.append(f"{c.text}: no measurement recorded for this command (rerun readme_numbers.py examples)")
            continue
        if rec["exit"] != c.exit:
            problems.append(f"{c.text}: exited {rec['exit']} when measured, the README says {c.exit}")
        numbers, names = c.quoted_numbers(), quoted(c, rec)
        if len(numbers) != len(names):
            problems.append(f"{c.text}: the comment quotes {numbers}, the measurement records {names}")
            continue
        problems += [f"{c.text}: quotes {n} for {name}, measured {rec.get(name)}"
                     for n, name in zip(numbers, names) if not within_rounding(n, rec.get(name))]
    return problems


def test_every_number_an_example_comment_quotes_is_the_recorded_measurement():
    rec = examples_record()
    problems = drift([c for block in readme_blocks(README) for c in block], {r["command"]: r for r in rec["commands"]})
    assert not problems, "\n".join(problems)


def test_each_section_quoting_a_measurement_says_which_host_and_commit_measured_it():
    rec = examples_record()
    assert rec["threads"] == 1 and not rec["dirty"]
    for section in README.split("\n## ")[1:]:
        if any(c.quoted_numbers() for block in readme_blocks(section) for c in block):
            assert f"measured on {rec['host_class']}, commit {rec['commit']}" in section, section.splitlines()[0]


def test_drift_catches_an_unmeasured_number_and_a_changed_one():
    ok = Command("scripts/fp8bench example-jsonl runs/x.jsonl", "[shows: wrote] 400 rows")
    rec = {"command": ok.text, "exit": 0, "rows": 400}
    assert drift([ok], {ok.text: rec}) == []
    for comment in ("[shows: wrote] 410 rows", "[shows: wrote] 400 rows in 3 s"):
        assert drift([Command(ok.text, comment)], {ok.text: rec}), comment
    assert drift([Command(ok.text + " --rows 9", "400 rows")], {ok.text: rec}), "an unrecorded command"


def test_quoted_numbers_skip_names_claims_and_overrides():
    c = Command("scripts/pretrain steps=5", "[exit: 2] [shows: lr=-1.0 > 0] fp8 at layers.1.mlp.down, "
                "seed=0 e.g. [0_seed=1]: loss 4.92 -> 1.15 (2 min).")
    assert c.quoted_numbers() == ["4.92", "1.15", "2"]


def test_the_stress_prose_names_the_outlier_conf_stress_sets():
    from bench.config.schema import StressConfig

    s = StressConfig()
    section = README.split("**Stress:")[1].split("**Preemption")[0]
    assert f"`{s.module}`" in section and f"at step {s.from_step}" in section
    assert f"×{s.magnitude:g}" in section and f"×{s.growth:g}" in section


def test_the_stable_overrides_list_every_choice_conf_has():
    text = " ".join(README.split("Stable overrides:")[1].split("Other knobs")[0].split())
    for group in ("model", "task", "precision", "is_correction"):
        listed = re.search(rf"`{group}` \(([^)]+)\)", text).group(1).split(", ")
        assert sorted(listed) == sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml")), group


def test_the_tour_names_every_bench_package_and_recipe():
    import bench

    tour = README.split("## Tour")[1].split("\n## ")[0]
    assert [m for m in re.findall(r"^  (\w+)/", tour, re.M)] == list(bench.LAYERS)
    assert all(f"{p.name}" in tour for p in (ROOT / "recipes").glob("[a-z]*.py"))
    assert not re.search(r"\b(model|training|session|eval|logger|rundir|checkpoint)\.py", tour), "the old flat layout"
