"""bench/core/atomic.py: a target is the old file or the new one, never half; no temp file remains."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest

from bench.core import atomic


def test_text_json_and_bytes_land_whole(tmp_path):
    atomic.write_text(tmp_path / "a" / "t.txt", "héllo\n")  # missing parents are created
    assert (tmp_path / "a" / "t.txt").read_bytes() == "héllo\n".encode()
    atomic.write_json(tmp_path / "j.json", {"b": 1, "a": [1.5]}, sort_keys=True)
    assert (tmp_path / "j.json").read_text() == '{"a": [1.5], "b": 1}\n'
    atomic.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["b.bin", "j.json", "t.txt"]


def test_callback_streams_like_torch_save(tmp_path):
    state = {"w": [1, 2, 3]}
    atomic.write_with(tmp_path / "s.pt", lambda f: pickle.dump(state, f))
    assert pickle.loads((tmp_path / "s.pt").read_bytes()) == state


def test_failure_midway_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "summary.json"
    atomic.write_json(path, {"status": "running"})

    def half(f):
        f.write(b'{"status": "compl')
        raise KeyboardInterrupt  # even an interrupt must not leave a torn file

    with pytest.raises(KeyboardInterrupt):
        atomic.write_with(path, half)
    assert json.loads(path.read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_importing_atomic_and_the_report_tools_does_not_import_torch():
    code = ("import sys, bench.core.atomic, bench.report.gate, bench.report.gate_output, bench.report.compare, "
            "bench.report.baseline, bench.report.verdict, bench.cli; assert 'torch' not in sys.modules, 'torch'")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
