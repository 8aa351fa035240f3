"""Record the numbers README.md quotes: baselines/readme_numbers.json.

    python scripts/readme_numbers.py runs/matrix/<stamp>        # after scripts/run.sh: "main_job"
    python scripts/readme_numbers.py examples [--out DIR]       # run the README examples: "examples"

main_job: copies that run's run_info.json (scripts/matrix_info.py: host class, commit, cells, seeds,
steps, wall time, the bf16/bf16 control's held-out accuracy at the start and end). The README's
main-job line quotes these numbers.
examples: runs every ```` ```bash test ```` command of README.md at its full step count, single-
threaded, from DIR (default runs/readme_examples/<stamp>; scripts/readme_examples.py), and records
per command its exit code, wall time and the figures its run dir holds, with the host class
(scripts/host_class.py), commit and date they were measured on. The README's example comments quote
them. Each mode rewrites only its own key. tests/test_readme_claims.py checks both against the README.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "baselines" / "readme_numbers.json"


def update(key: str, value: dict) -> None:
    """Rewrite OUT with `key` replaced and every other key kept as it was."""
    data = json.loads(OUT.read_text()) if OUT.is_file() else {}
    data[key] = value
    OUT.write_text(json.dumps(data, indent=2) + "\n")


def main_job(matrix_dir: str) -> None:
    info = json.loads((Path(matrix_dir) / "run_info.json").read_text())
    update("main_job", info)
    print(f"wrote {OUT}: main_job on {info['host_class']} at {info['commit']}")


def examples(out: Path) -> None:
    from host_class import host_class
    from readme_blocks import readme_blocks
    from readme_examples import run_all

    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    cls, cap = host_class()
    # The code that runs is the checkout as it is now: an edit made during the run must not relabel it.
    commit, dirty = git("rev-parse", "--short", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    start, t0 = datetime.now(timezone.utc), time.monotonic()
    records = run_all(readme_blocks(), out)
    update("examples", {"host_class": cls, "capability": cap, "threads": 1, "commit": commit, "dirty": dirty,
                        "date": start.strftime("%Y-%m-%d %H:%M UTC"), "wall_s": round(time.monotonic() - t0, 1),
                        "run_dir": str(out), "commands": records})
    print(f"wrote {OUT}: {len(records)} example commands on {cls} ({cap}) in {time.monotonic() - t0:.0f} s")
    bad = [r["command"] for r, c in zip(records, (c for b in readme_blocks() for c in b)) if r["exit"] != c.exit]
    sys.exit(f"unexpected exit codes: {bad}" if bad else 0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["examples"]:
        ap = argparse.ArgumentParser(prog="readme_numbers.py examples")
        ap.add_argument("--out", type=Path, default=ROOT / "runs" / "readme_examples" / time.strftime("%Y%m%d_%H%M%S"))
        examples(ap.parse_args(sys.argv[2:]).out.resolve())
    else:
        main_job(sys.argv[1])
