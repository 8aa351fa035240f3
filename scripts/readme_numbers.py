"""Record the main job's measured numbers for README.md: baselines/readme_numbers.json.

    python scripts/readme_numbers.py runs/matrix/<stamp>     # after scripts/run.sh

Copies that run's run_info.json (scripts/matrix_info.py: host class, commit, cells, seeds, steps,
wall time, the bf16/bf16 control's held-out accuracy at the start and end) under "main_job". The
README's main-job line quotes these numbers; tests/test_readme_claims.py checks that it does, and
that the cells, seeds, steps and launcher it names are what conf/matrix and scripts/run.sh run.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "baselines" / "readme_numbers.json"


def main(matrix_dir: str) -> None:
    info = json.loads((Path(matrix_dir) / "run_info.json").read_text())
    data = json.loads(OUT.read_text()) if OUT.is_file() else {}
    data["main_job"] = info
    OUT.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {OUT}: main_job on {info['host_class']} at {info['commit']}")


if __name__ == "__main__":
    main(sys.argv[1])
