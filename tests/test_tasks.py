import pytest
import torch

from bench.tasks import TASKS, build_task
from bench.tasks.tokenizer import EOS, decode, encode

TASKS_WITH_ANSWERS = [{"name": "addition", "digits": 3}, {"name": "reversal", "length": 6}]


@pytest.mark.parametrize("cfg", TASKS_WITH_ANSWERS, ids=lambda c: c["name"])
def test_problems_are_a_pure_function_of_the_seed(cfg):
    t = build_task(cfg)
    assert t.problems("train", 20, 7) == t.problems("train", 20, 7)
    assert t.problems("train", 20, 7) != t.problems("train", 20, 8)


@pytest.mark.parametrize("cfg", TASKS_WITH_ANSWERS, ids=lambda c: c["name"])
def test_train_and_eval_splits_never_overlap(cfg):
    t = build_task(cfg)
    train = {p.prompt for p in t.problems("train", 3000, 0)}
    ev = {p.prompt for p in t.problems("eval", 300, 0)}
    assert ev and not train & ev


@pytest.mark.parametrize("cfg", TASKS_WITH_ANSWERS, ids=lambda c: c["name"])
def test_prompts_have_fixed_width_and_batches_mask_only_answers(cfg):
    t = build_task(cfg)
    prompts = t.encode_prompts(t.problems("train", 8, 0))
    assert prompts.shape == (8, t.prompt_len)
    inputs, targets, mask = t.lm_batch("train", 8, 0)
    assert inputs.shape == targets.shape == mask.shape == (8, t.seq_len - 1)
    assert mask.sum(1).eq(t.seq_len - t.prompt_len).all()  # answer digits + EOS
    assert (targets[:, -1] == EOS).all()


def test_addition_answers_are_correct_sums():
    t = build_task({"name": "addition", "digits": 3, "reverse_answer": True})
    for p in t.problems("train", 50, 1):
        a, b = p.prompt.rstrip("=").split("+")
        assert int(p.answer[::-1]) == int(a) + int(b)


def test_reward_is_exact_match():
    t = build_task({"name": "reversal", "length": 4})
    p = t.problems("train", 1, 0)[0]
    assert t.reward(p, p.answer) == 1.0
    assert t.reward(p, p.answer[:-1]) == 0.0
    assert t.reward(p, p.answer + "x") == 0.0


def test_tokenizer_round_trips_and_stops_at_eos():
    ids = encode("12+34=")
    assert decode(ids) == "12+34="
    assert decode(ids + [EOS] + encode("99")) == "12+34="


def test_textfile_task_reads_a_users_file(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    t = build_task({"name": "textfile", "path": str(f), "window": 32})
    inputs, targets, mask = t.lm_batch("train", 4, 0)
    assert inputs.shape == (4, 32) and mask.all()
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_unknown_task_names_valid_choices():
    with pytest.raises(ValueError, match="valid: " + ", ".join(TASKS)):
        build_task({"name": "sudoku"})


@pytest.mark.parametrize("name", list(TASKS))
def test_a_bare_task_name_takes_every_default_from_its_config_dataclass(name, tmp_path):
    from dataclasses import asdict

    cfg = {"name": name}
    if name == "textfile":
        f = tmp_path / "corpus.txt"
        f.write_text("lorem ipsum dolor sit amet " * 200)
        cfg["path"] = str(f)
    if name == "jsonl":
        from bench.tasks.jsonl import write_example

        write_example(tmp_path / "rows.jsonl", 100, 0)
        cfg["path"] = str(tmp_path / "rows.jsonl")
    t = build_task(cfg)
    for key, default in asdict(TASKS[name].Config()).items():
        if key not in ("name", "path") and hasattr(t, key):
            assert getattr(t, key) == default, key


def test_unknown_task_knob_names_the_valid_knobs():
    with pytest.raises(ValueError, match=r"unknown key task.digitz for task=addition; valid: digits, reverse_answer"):
        build_task({"name": "addition", "digitz": 3})


@pytest.mark.parametrize("cfg,match", [
    ({"name": "textfile"}, "needs task.path=FILE"),
    ({"name": "textfile", "path": "/nonexistent.txt"}, "'/nonexistent.txt' is not a readable file; valid:"),
    ({"name": "addition", "loss_on": "some"}, "task.loss_on='some'; valid: answer, all"),
    ({"name": "reversal", "length": 0}, "task.length=0 must be positive"),
])
def test_bad_task_values_name_the_value(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_task(cfg)


def test_textfile_window_must_be_positive(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("lorem ipsum " * 500)
    with pytest.raises(ValueError, match="task.window=0 must be a positive number of tokens"):
        build_task({"name": "textfile", "path": str(f), "window": 0})


def test_addition_batches_are_unchanged_by_the_tokenizer_interface():
    """The character tokenizer path builds exactly the tensors it built before tasks took a
    tokenizer: BOS + prompt + answer + EOS, no padding, loss on the answer and EOS."""
    from bench.tasks import build_task
    from bench.tasks.tokenizer import BOS, EOS, encode

    task = build_task({"name": "addition", "digits": 3})
    probs = task.problems("train", 5, 9)
    seqs = torch.tensor([[BOS] + encode(p.prompt + p.answer) + [EOS] for p in probs])
    inputs, targets, mask = task.lm_batch("train", 5, 9)
    assert torch.equal(inputs, seqs[:, :-1]) and torch.equal(targets, seqs[:, 1:])
    assert mask.sum().item() == 5 * (3 + 1 + 1) and not mask[:, :task.prompt_len - 1].any()
    assert torch.equal(task.encode_prompts(probs), seqs[:, :task.prompt_len])


@pytest.mark.parametrize("name", ["addition", "reversal", "arith"])
def test_tasks_accept_an_hf_tokenizer(name):
    pytest.importorskip("transformers")
    from test_hf import char_tokenizer

    from bench.tasks import build_task
    from bench.tasks.hf_tokenizer import HFTokenizer

    hf = char_tokenizer()
    task = build_task({"name": name}, HFTokenizer(hf))
    probs = task.problems("train", 6, 0)
    inputs, targets, mask = task.lm_batch("train", 6, 0)
    for i, p in enumerate(probs):
        assert hf.decode(targets[i][mask[i]].tolist()) == p.answer + "</s>"
    prompts = task.encode_prompts(probs)
    assert prompts.shape[1] >= max(len(p.prompt) for p in probs) + 1 and task.eos_id == hf.eos_token_id
    assert task.reward(probs[0], task.completion_text(torch.tensor(hf.encode(probs[0].answer) + [hf.eos_token_id, 7])))


def test_task_state_prints_the_same_in_every_process():
    """The GRPO warm-up cache is keyed by the task's attributes: none may print a memory address."""
    from bench.tasks import build_task

    task = build_task({"name": "arith"})
    task.prompt_len
    assert " at 0x" not in str({k: v for k, v in vars(task).items() if not k.startswith("_")})
