"""What scripts/run.sh ran and whether its control learned: writes OUT/run_info.json and prints
the lines run.sh appends to report.md.

    python scripts/matrix_info.py OUT HOST_CLASS HOST_CAPABILITY WALL_S

Reads the run dirs under OUT/runs (config.yaml, evals.jsonl). The control is the bf16/bf16 cell;
its rise is the mean over its seeds of (held-out accuracy at the last eval - at step 0).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from statistics import fmean

import yaml


def runs(root: Path):
    for cfg in sorted(root.rglob("config.yaml")):
        c = yaml.safe_load(cfg.read_text())
        evals = [json.loads(x) for x in (cfg.parent / "evals.jsonl").read_text().splitlines() if x.strip()]
        acc = [(e["step"], v) for e in evals for k, v in e.items() if k.endswith("/accuracy")]
        yield c, acc


def main(out: str, host_class: str, capability: str, wall_s: str) -> dict:
    out = Path(out)
    cells, seeds, steps, control = set(), set(), set(), []
    for c, acc in runs(out / "runs"):
        cell = f"{c['trainer_precision']['name']}/{c['generator_precision']['name']}/{c['is_correction']['mode']}"
        cells.add(cell)
        seeds.add(c["seed"])
        steps.add(c["steps"])
        if cell == "bf16/bf16/none" and len(acc) >= 2:
            control.append((acc[0][1], acc[-1][1]))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    info = {"host_class": host_class, "capability": capability, "commit": commit or "unknown",
            "cells": sorted(cells), "seeds": sorted(seeds), "steps": sorted(steps), "wall_s": float(wall_s),
            "control_acc_start": fmean(a for a, _ in control) if control else None,
            "control_acc_end": fmean(b for _, b in control) if control else None}
    (out / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def lines(info: dict) -> list[str]:
    out = ["## What was run", "",
           f"Host class `{info['host_class']}` ({info['capability']}), commit {info['commit']}: "
           f"{len(info['cells'])} cells x {len(info['seeds'])} seeds x {'/'.join(map(str, info['steps']))} steps "
           f"in {info['wall_s'] / 60:.1f} min end to end. Cells: {', '.join(info['cells'])}."]
    if info["control_acc_start"] is not None:
        rise = info["control_acc_end"] - info["control_acc_start"]
        out.append(f"The bf16/bf16 control's held-out accuracy went {info['control_acc_start']:.3f} -> "
                   f"{info['control_acc_end']:.3f} (mean over seeds): a rise of {rise:+.3f}"
                   + ("." if rise > 0 else "; it did NOT learn in this run, so the matrix says little about "
                      "what precision costs to learning."))
    if info["host_class"] != "cuda":
        out.append("Times in this report are CPU emulation costs on this host, not precision savings.")
    return out + [""]


if __name__ == "__main__":
    print("\n".join(lines(main(*sys.argv[1:5]))))
