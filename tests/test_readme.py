"""The README's examples run as written (with fewer steps) and show what they say they show.

Convention (README.md): a fenced block opened with ```` ```bash test ```` holds commands run by
this file, one per line (a trailing `\\` continues a line), from the repository root's point of
view (`scripts/...`). After a command, its `#` comment says in words what it shows and may carry
checkable claims in brackets:
    [shows: TEXT]   TEXT appears in the command's stdout/stderr
    [exit: N]       the command exits N (default 0)
Commands of one block run in order in one directory (a later command reads an earlier one's run
dir); GRPO commands use the checkout's runs/cache, so the warm-up trains at most once. Recipe
commands run SCALE times shorter (every SHORT key's value divided, so a stop, resume and
extension keep their order) with `threads=1`, and a stress outlier starts at step 2, not 60. The
parser is scripts/readme_blocks.py (shared with scripts/readme_numbers.py, which runs the same
commands in full). Any `scripts/...` command outside a test block fails
test_every_readme_command_is_in_a_tested_block: the README cannot grow untested examples.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from readme_blocks import README, fenced_blocks, readme_blocks, split_comment  # noqa: E402  (the one parser)

WRAPPERS = ("scripts/pretrain", "scripts/grpo", "scripts/fp8bench")
SHORT = ("steps", "stop_after", "eval_every", "checkpoint_every")  # divided by SCALE in the test
SCALE = 10  # 200 -> 20 steps; a stop at 20 of 40 and an extension to 60 keep their proportions
RECIPE_EXTRA = ["threads=1", "eval_problems=8"]


BLOCKS = readme_blocks()


def shortened(args: list[str]) -> list[str]:
    """A recipe command with SCALE times fewer steps, one thread, a small eval; others unchanged."""
    if args[0] not in ("scripts/pretrain", "scripts/grpo"):
        return args
    out = []
    for a in args:
        key, eq, value = a.partition("=")
        if eq and key in SHORT and value.isdigit():
            a = f"{key}={max(1, int(value) // SCALE)}"
        out.append(a)
    if "stress=outlier" in out:
        out.append("stress.from_step=2")
    if args[0] == "scripts/grpo":  # the checkout's warm-start cache, as a user of this clone has it
        out.append(f"warmup.cache_dir={ROOT / 'runs' / 'cache'}")
    return out + RECIPE_EXTRA


def test_the_readme_has_tested_examples_and_each_names_a_wrapper():
    assert len(BLOCKS) >= 4
    for block in BLOCKS:
        for c in block:
            assert c.args[0] in WRAPPERS, c.text
            assert c.comment, f"{c.text}: say what it shows in a comment"


def test_every_readme_command_is_in_a_tested_block():
    for info, lines in fenced_blocks(README.read_text()):
        if info == "bash test":
            continue
        for line in lines:
            code, _ = split_comment(line)
            # A synopsis (CLI reference) names placeholders: RUN_DIR, KEY=A,B, [OVERRIDE...], <stamp>.
            synopsis = re.search(r"\[[A-Z]|<\w+>|\b[A-Z]{2,}[A-Z_]*\b", code)
            if any(code.startswith(w + " ") for w in WRAPPERS) and not synopsis:
                pytest.fail(f"README command outside a `bash test` block (untested): {code}")


def test_shortening_caps_steps_and_starts_the_outlier_early():
    assert shortened(["scripts/pretrain", "steps=200", "stop_after=20", "stress=outlier"]) == [
        "scripts/pretrain", "steps=20", "stop_after=2", "stress=outlier", "stress.from_step=2", *RECIPE_EXTRA]
    assert shortened(["scripts/fp8bench", "compare", "steps=200"]) == ["scripts/fp8bench", "compare", "steps=200"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs_and_shows_what_it_says(block, workdir):
    env = {**os.environ, "WANDB_MODE": "disabled", "FP8BENCH_PYTHON": sys.executable}
    for c in block:
        args = shortened(c.args)
        r = subprocess.run([str(ROOT / args[0]), *args[1:]], cwd=workdir, env=env, capture_output=True, text=True,
                           timeout=900)
        out = r.stdout + r.stderr
        assert r.returncode == c.exit, f"{c.text}\n{out[-3000:]}"
        for text in c.shows:
            assert text in out, f"{c.text}: expected to show {text!r}\n{out[-3000:]}"
