"""task=jsonl: a user's {"prompt", "answer"} file, its verifiers, split, and one-line bad rows."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from fractions import Fraction

import pytest

from bench.cli import main as fp8bench
from bench.tasks import build_task
from bench.tasks.jsonl import write_example
from bench.tasks.verifiers import parse_number, score
from helpers import QUIET, run_cli
from test_validation import run_entry

HAVE_MATH = importlib.util.find_spec("math_verify") is not None


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def task(path, **kw):
    return build_task({"name": "jsonl", "path": str(path), **kw})


def test_the_held_out_split_is_the_prompt_hash_bucket_and_eval_keeps_file_order(tmp_path):
    f = tmp_path / "sums.jsonl"
    write_example(f, 300, 0)
    rows = [json.loads(line) for line in f.read_text().splitlines()]

    def held_out(prompt):  # the definition, independently: blake2b-64 little-endian mod 1000 < 100
        h = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "little")
        return h % 1000 < 100

    t = task(f)
    want_eval = [(r["prompt"], r["answer"]) for r in rows if held_out(r["prompt"])]
    assert [(p.prompt, p.answer) for p in t.problems("eval", 10_000, 0)] == want_eval
    assert [(p.prompt, p.answer) for p in t.problems("eval", 3, 99)] == want_eval[:3]
    train = t.problems("train", 500, 7)
    assert train == t.problems("train", 500, 7) and train != t.problems("train", 500, 8)
    assert not any(held_out(p.prompt) for p in train)
    assert {p.prompt for p in train} <= {r["prompt"] for r in rows}


def test_the_first_bad_row_is_named_by_file_and_line_with_the_count_of_others(tmp_path):
    f = write(tmp_path / "bad.jsonl", [{"prompt": "1+1=", "answer": "2"}, "", "{oops", {"prompt": "x"},
                                       {"prompt": "caf\u00e9", "answer": "1"}])
    with pytest.raises(ValueError) as e:
        task(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}:3: not JSON") and "(and 2 more bad rows)" in msg and "valid:" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("row, needle", [
    ({"prompt": "x"}, 'needs the keys "prompt" and "answer"'),
    ({"prompt": "", "answer": "1"}, '"prompt" must be a non-empty string'),
    ({"prompt": "q", "answer": True}, '"answer" must be a non-empty string or a number'),
    ({"prompt": "caf\u00e9", "answer": "1"}, "outside the character tokenizer's printable ASCII"),
    ({"prompt": "q", "answer": "many"}, "holds no number (task.verifier=numeric)"),
])
def test_each_kind_of_bad_row_says_what_is_wrong(tmp_path, row, needle):
    f = write(tmp_path / "one.jsonl", [{"prompt": "a", "answer": "1"}, row])
    with pytest.raises(ValueError, match=None) as e:
        task(f, verifier="numeric")
    assert str(e.value).startswith(f"{f}:2: ") and needle in str(e.value)


def test_a_numeric_answer_in_json_is_taken_as_its_text(tmp_path):
    f = write(tmp_path / "n.jsonl", [{"prompt": f"p{i}", "answer": i} for i in range(40)])
    t = task(f, verifier="numeric")
    p = t.problems("train", 1, 0)[0]
    assert p.answer == p.prompt[1:] and t.reward(p, f"so {p.answer}.") == 1.0


def test_an_empty_split_and_a_bad_knob_are_bad_input(tmp_path):
    f = write(tmp_path / "two.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}])
    with pytest.raises(ValueError, match="split empty"):
        task(f)
    with pytest.raises(ValueError, match="task.verifier='fuzzy'; valid: exact, numeric, math"):
        task(f, verifier="fuzzy")
    with pytest.raises(ValueError, match="needs task.path"):
        build_task({"name": "jsonl"})


def test_exact_compares_stripped_text():
    assert score("exact", " 18", "18 ") == 1.0
    assert score("exact", "18", "18.0") == 0.0


@pytest.mark.parametrize("text, value", [
    ("18", Fraction(18)), ("so 3 then 18.", Fraction(18)), ("-4.50", Fraction(-9, 2)), ("1,000", Fraction(1000)),
    (".5", Fraction(1, 2)), ("2e3", Fraction(2000)), ("none", None), ("1,2,3", Fraction(3)),
])
def test_numeric_reads_the_last_number_exactly(text, value):
    assert parse_number(text) == value


def test_numeric_equality_is_of_values_not_text():
    assert score("numeric", "0.5", "it is .50") == 1.0
    assert score("numeric", "18", "18 or 19") == 0.0
    assert score("numeric", "18", "no idea") == 0.0


@pytest.mark.skipif(not HAVE_MATH, reason="math-verify not installed (pip install 'fp8bench[math]')")
def test_math_verifier_accepts_equal_expressions_and_rejects_others():
    assert score("math", "$\\frac{1}{2}$", "the answer is $0.5$") == 1.0
    assert score("math", "$\\frac{1}{2}$", "the answer is $\\frac{1}{3}$") == 0.0


@pytest.mark.skipif(HAVE_MATH, reason="checks the message shown when math-verify is absent")
def test_math_verifier_without_the_package_says_how_to_install_it(tmp_path):
    f = write(tmp_path / "m.jsonl", [{"prompt": "a", "answer": "1"}])
    with pytest.raises(ValueError, match=r"pip install 'fp8bench\[math\]'"):
        task(f, verifier="math")


def test_the_warm_start_cache_key_changes_with_the_file_content(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_example(a, 100, 0)
    write_example(b, 100, 1)
    ta, tb = task(a), task(b)
    assert ta.digest != tb.digest
    assert "digest" in vars(ta)  # bench/rl/warmstart.py keys on the task's public attributes


def test_example_jsonl_writes_a_file_the_task_reads(tmp_path, capsys):
    out = tmp_path / "ex.jsonl"
    assert fp8bench(["example-jsonl", str(out), "--rows", "50"]) == 0
    assert len(out.read_text().splitlines()) == 50 and len(task(out, verifier="numeric").problems("eval", 99, 0)) > 0


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="datasets not installed")
def test_a_datasets_directory_reads_like_the_file(tmp_path):
    import datasets

    rows = [{"prompt": f"p{i}", "answer": str(i)} for i in range(50)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    write(tmp_path / "f.jsonl", rows)
    assert task(tmp_path / "ds").problems("train", 20, 3) == task(tmp_path / "f.jsonl").problems("train", 20, 3)


def test_a_bad_row_stops_grpo_with_one_line_and_exit_2(tmp_path):
    f = write(tmp_path / "bad.jsonl", [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2="}])
    # the entry point in this process (test_validation.run_entry); its real-process cases keep `python -m` tested
    code, stderr = run_entry(["-m", "recipes.grpo", "task=jsonl", f"task.path={f}", f"run_dir={tmp_path / 'run'}",
                              *QUIET])
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and f"{f}:2:" in lines[0] and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_grpo_trains_on_a_users_file_with_the_numeric_verifier(tmp_path):
    f = tmp_path / "sums.jsonl"
    write_example(f, 400, 0)
    run = tmp_path / "run"
    r = run_cli(["-m", "recipes.grpo", "task=jsonl", f"task.path={f}", "task.verifier=numeric", "steps=3",
                 "eval_every=3", "eval_problems=8", f"run_dir={run}", f"warmup.cache_dir={tmp_path / 'cache'}",
                 "warmup.steps=20", *QUIET])
    assert r.returncode == 0, r.stderr[-2000:]
    evals = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 3] and all("eval/jsonl/accuracy" in e for e in evals)
