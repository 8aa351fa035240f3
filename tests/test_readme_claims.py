"""README.md's main-job claims match the code (conf/matrix, scripts/run.sh) and its measured
numbers are those scripts/readme_numbers.py recorded (baselines/readme_numbers.json)."""
from __future__ import annotations

import json
import re

from helpers import ROOT

README = (ROOT / "README.md").read_text()
RUN_SH = (ROOT / "scripts" / "run.sh").read_text()
NUMBERS = json.loads((ROOT / "baselines" / "readme_numbers.json").read_text())["main_job"]


def main_job_line() -> str:
    return next(ln for ln in README.splitlines() if ln.startswith("scripts/run.sh ") and "main job" in ln)


def run_sh_default(name: str) -> str:
    """The value run.sh uses for NAME on a host with native bf16 (its non-avx2 branch)."""
    if name == "steps":
        return re.search(r'"steps=\$\{FP8BENCH_STEPS:-(\d+)\}"', RUN_SH).group(1)
    return re.search(r"\*\)\s+seeds_default=([\d,]+);", RUN_SH).group(1)


def test_the_main_job_line_names_the_cells_seeds_and_steps_run_sh_runs():
    m = re.search(r"(\d+) cells x (\d+) seeds x (\d+) steps", main_job_line())
    assert m, main_job_line()
    cells = len(list((ROOT / "conf" / "matrix").glob("*.yaml")))
    assert "'+matrix=glob(*)'" in RUN_SH  # every cell of conf/matrix on a native-bf16 host
    assert int(m.group(1)) == cells
    assert int(m.group(2)) == len(run_sh_default("seeds").split(","))
    assert int(m.group(3)) == int(run_sh_default("steps"))


def test_the_main_job_line_quotes_the_recorded_measurement():
    line, n = main_job_line(), NUMBERS
    assert f"{n['wall_s'] / 60:.1f} min" in line and n["host_class"] in line and n["commit"] in line
    assert f"{n['control_acc_start']:.3f} -> {n['control_acc_end']:.3f}" in line
    assert len(n["cells"]) == len(list((ROOT / "conf" / "matrix").glob("*.yaml")))
    assert n["steps"] == [int(run_sh_default("steps"))] and len(n["seeds"]) == len(run_sh_default("seeds").split(","))


def test_the_sweeps_section_names_the_launcher_run_sh_passes():
    launcher = re.search(r"hydra/launcher=(\w+)", RUN_SH).group(1)
    sweeps = README.split("## Sweeps")[1].split("\n## ")[0]
    assert f"hydra/launcher={launcher}" in sweeps
    assert set(re.findall(r"hydra/launcher=(\w+)", sweeps)) == {launcher}
    assert (ROOT / "conf" / "hydra" / "launcher" / f"{launcher}.yaml").is_file()
