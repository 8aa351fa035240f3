"""The wheel ships conf/: `fp8bench gate` without --rules works from a non-editable install.

The wheel is built into a temp dir (`pip wheel --no-deps --no-build-isolation`, copying the
tree first so no build/ or egg-info lands in the checkout) and unzipped there instead of
installed: the unzipped tree is exactly what site-packages would hold. The gate then runs with
that tree alone on sys.path, from an unrelated working directory."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from runfixtures import write_matrix

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv*", "runs", "build", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", "wandb"))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {p.stderr.strip().splitlines()[-1:]}")
    (whl,) = (tmp / "dist").glob("*.whl")
    zipfile.ZipFile(whl).extractall(tmp / "site")
    return tmp / "site"


def test_wheel_holds_every_config_file(site):
    shipped = {p.relative_to(site).as_posix() for p in (site / "conf").rglob("*.yaml")}
    wanted = {p.relative_to(REPO).as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    assert wanted and shipped == wanted


def test_gate_finds_default_rules_in_an_installed_tree(site, tmp_path):
    runs = write_matrix(tmp_path / "runs", [dict(precision="bf16")], noise=0.002)[0].parent
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-c", "import bench.report.rules as r, sys; print(r.__file__); "
                        "from bench.cli import main; sys.exit(main(sys.argv[1:]))", "gate", "--baseline",
                        str(runs), str(runs)], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert p.stdout.splitlines()[0].startswith(str(site)), p.stdout  # the unzipped copy, not the checkout
    assert p.returncode == 0 and "precision gate: PASS" in p.stdout, p.stdout + p.stderr
