"""README.md's main-job claims match the code (conf/matrix, scripts/run.sh) and its measured
numbers are those scripts/readme_numbers.py recorded (baselines/readme_numbers.json)."""
from __future__ import annotations

import json
import re

import pytest

from helpers import ROOT

README = (ROOT / "README.md").read_text()
RUN_SH = (ROOT / "scripts" / "run.sh").read_text()
NUMBERS_FILE = ROOT / "baselines" / "readme_numbers.json"


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


@pytest.mark.skipif(not NUMBERS_FILE.is_file(), reason="no main-job measurement recorded yet (scripts/readme_numbers.py)")
def test_the_recorded_measurement_is_of_the_matrix_the_code_runs():
    """Any figure quoted from the measurement must be of the matrix run.sh runs today on that host class."""
    n = json.loads(NUMBERS_FILE.read_text())["main_job"]
    assert n["host_class"] in ("avx512_bf16", "avx2", "cuda") and n["commit"]
    b = run_sh_branch(n["host_class"])
    assert len(n["cells"]) == len(b["cells"]) and n["steps"] == [b["steps"]] and len(n["seeds"]) == len(b["seeds"])


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
