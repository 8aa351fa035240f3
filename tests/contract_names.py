"""The names a run writes (metric keys, eval keys, event fields, summary keys, run-dir files) for two
short runs that between them touch every subsystem: GRPO with an FP8 generator, inference kernels, TIS
and attribution; pretraining with fp8_delayed and the numerics monitor. tests/data/run_names.json holds
what the code wrote before the layout refactor (issue 22); test_layout.py checks the code still writes
exactly these names.

    .venv/bin/python tests/contract_names.py tests/data/run_names.json   # regenerate (on purpose only)
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import read_jsonl, run_in_process  # noqa: E402

GRPO = ["model.n_layers=2", "steps=3", "eval_every=2", "checkpoint_every=2", "eval_problems=8",
        "grpo.prompts_per_step=4", "grpo.group_size=4", "warmup.steps=10", "monitor.interval=1",
        "generator_precision=fp8_blockwise", "is_correction=tis", "attribution.interval=1"]
PRETRAIN = ["model.n_layers=2", "steps=3", "eval_every=2", "checkpoint_every=2", "monitor.interval=1",
            "precision=fp8_delayed"]


def names(recipe: str, overrides: list[str], root: Path) -> dict[str, list[str]]:
    d = root / recipe
    extra = [f"warmup.cache_dir={root / 'cache'}"] if recipe == "grpo" else []
    assert run_in_process(recipe, overrides + extra + [f"run_dir={d}"]) == 0
    def keys(fname):
        return sorted({k for row in read_jsonl(d / fname) for k in row}) if (d / fname).exists() else []
    return {"files": sorted(p.name for p in d.iterdir() if not p.name.startswith(".")),
            "metrics": keys("metrics.jsonl"), "evals": keys("evals.jsonl"), "events": keys("events.jsonl"),
            "attribution": keys("attribution.jsonl"),
            "summary": sorted(json.loads((d / "summary.json").read_text()))}


def all_names() -> dict[str, dict[str, list[str]]]:
    with tempfile.TemporaryDirectory() as tmp:
        return {"grpo": names("grpo", GRPO, Path(tmp)), "pretrain": names("pretrain", PRETRAIN, Path(tmp))}


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(all_names(), indent=1, sort_keys=True) + "\n")
