"""Resume repairs a damaged metrics.jsonl honestly (issue 27): the garbled row written right after
the resumed checkpoint (the issue's case: step 13's row, checkpoint after step 14 of the count) is
reported by its step and flagged in events.jsonl, a garbled row inside the kept part is moved
aside and named, and the rows moved aside after the checkpoint are named by their real steps."""
import json

from helpers import read_jsonl, run_in_process

TINY = ["eval_every=100", "eval_problems=4", "batch_size=4", "monitor.interval=0", "checkpoint_every=2"]


def garble(path, step: int) -> bytes:
    """Replace step `step`'s row with a torn copy of itself (the bytes an interrupted write leaves)."""
    lines = path.read_bytes().splitlines(keepends=True)
    i = next(i for i, l in enumerate(lines) if json.loads(l)["step"] == step)
    lines[i] = lines[i][: len(lines[i]) // 2] + b"\n"
    path.write_bytes(b"".join(lines))
    return lines[i]


def lost_events(d) -> list[float]:
    return [e["value"] for e in read_jsonl(d / "events.jsonl") if e["kind"] == "metrics_row_lost"]


def test_garbled_row_after_the_checkpoint_is_reported_by_its_step_and_flagged(tmp_path, capsys):
    d = tmp_path / "run"
    assert run_in_process("pretrain", [*TINY, "steps=6", "stop_after=4", f"run_dir={d}"]) == 0
    torn = garble(d / "metrics.jsonl", 3)  # the row end_step writes after the step-4 checkpoint
    capsys.readouterr()
    assert run_in_process("pretrain", [*TINY, "steps=6", f"run_dir={d}", "resume=true"]) == 0
    out = capsys.readouterr().out
    assert "the metrics row of step 3 (written after its checkpoint) is unreadable" in out, out
    assert "(1 unreadable line, written after the checkpoint)" in out, out
    assert [r["step"] for r in read_jsonl(d / "metrics.jsonl")] == [0, 1, 2, 4, 5]
    assert lost_events(d) == [3]
    (side,) = d.glob("metrics.jsonl.cut-*")
    assert side.read_bytes() == torn  # moved aside, never silently dropped


def test_rows_cut_after_the_checkpoint_are_named_by_their_steps(tmp_path, capsys):
    d = tmp_path / "run"
    assert run_in_process("pretrain", [*TINY, "steps=6", "checkpoint_every=4", f"run_dir={d}"]) == 0
    for f in (d / "checkpoints").glob("step_0000006.pt*"):  # as if killed after writing steps 4, 5
        f.unlink()
    capsys.readouterr()
    assert run_in_process("pretrain", [*TINY, "steps=6", "checkpoint_every=4", f"run_dir={d}", "resume=true"]) == 0
    out = capsys.readouterr().out
    assert "of metrics.jsonl (rows of steps 4, 5, written after the checkpoint)" in out, out
    assert [r["step"] for r in read_jsonl(d / "metrics.jsonl")] == [0, 1, 2, 3, 4, 5]
    assert lost_events(d) == []


def test_garbled_row_inside_the_kept_part_is_moved_aside_and_named(tmp_path, capsys):
    d = tmp_path / "run"
    assert run_in_process("pretrain", [*TINY, "steps=6", "stop_after=4", f"run_dir={d}"]) == 0
    torn = garble(d / "metrics.jsonl", 1)
    capsys.readouterr()
    assert run_in_process("pretrain", [*TINY, "steps=6", f"run_dir={d}", "resume=true"]) == 0
    out = capsys.readouterr().out
    assert "metrics.jsonl held an unreadable line (step 1's row)" in out, out
    assert [r["step"] for r in read_jsonl(d / "metrics.jsonl")] == [0, 2, 3, 4, 5]
    assert lost_events(d) == [1]
    (side,) = d.glob("metrics.jsonl.garbled-*")
    assert side.read_bytes() == torn
