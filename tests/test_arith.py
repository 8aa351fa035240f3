"""task=arith: seeded word problems, exact widths, the held-out split, the answer parser, tokenizers."""
import re

import pytest
import torch

from bench.tasks import build_task
from bench.tasks.arith import parse_answer


def direct_answer(prompt: str) -> int:
    """Re-derive the answer from the prompt's words alone (independent of the generator's code)."""
    value = int(re.search(r"has (\d+)", prompt).group(1))
    for verb, n in re.findall(r"(gets|gives away|doubles|triples)(?: (\d+))?", prompt):
        value = {"gets": lambda v: v + int(n), "gives away": lambda v: v - int(n),
                 "doubles": lambda v: 2 * v, "triples": lambda v: 3 * v}[verb](value)
    return value


@pytest.mark.parametrize("difficulty", [1, 2])
def test_answers_are_the_arithmetic_the_words_describe(difficulty):
    task = build_task({"name": "arith", "difficulty": difficulty})
    for p in task.problems("train", 300, 0):
        assert int(p.answer) == direct_answer(p.prompt) >= 0
        assert 2 <= len(re.findall(r"\. (?:She|He) ", p.prompt)) <= 4


def test_problems_are_a_pure_function_of_the_seed_and_eval_is_held_out():
    task = build_task({"name": "arith"})
    assert task.problems("train", 50, 3) == task.problems("train", 50, 3)
    assert task.problems("train", 50, 3) != task.problems("train", 50, 4)
    train = {p.prompt for p in task.problems("train", 2000, 0)}
    held = {p.prompt for p in task.problems("eval", 200, 0)}
    assert held and not train & held


def test_difficulty_sets_the_operand_digits():
    big = build_task({"name": "arith", "difficulty": 3}).problems("train", 200, 0)
    small = build_task({"name": "arith", "difficulty": 1}).problems("train", 200, 0)
    assert max(int(re.search(r"has (\d+)", p.prompt).group(1)) for p in small) <= 9
    assert max(int(re.search(r"has (\d+)", p.prompt).group(1)) for p in big) >= 100


@pytest.mark.parametrize("difficulty,max_ops", [(1, 4), (2, 3)])
def test_character_widths_bound_every_problem(difficulty, max_ops):
    task = build_task({"name": "arith", "difficulty": difficulty, "max_ops": max_ops})
    probs = task.problems("train", 3000, 1)
    assert max(1 + len(p.prompt) for p in probs) <= task.prompt_len
    assert max(2 + len(p.prompt) + len(p.answer) for p in probs) <= task.seq_len
    inputs, targets, mask = task.lm_batch("train", 8, 0)
    assert inputs.shape[1] <= task.seq_len - 1
    # loss on the answer and EOS only: the target tokens under the mask decode to answer + EOS
    for i, p in enumerate(task.problems("train", 8, 0)):
        assert task.tok.decode(targets[i][mask[i]]) == p.answer and targets[i][mask[i]][-1] == task.eos_id


def test_reward_parses_the_exact_integer():
    task = build_task({"name": "arith"})
    p = task.problems("train", 1, 0)[0]
    n = int(p.answer)
    assert task.reward(p, f" {n}") == 1.0 and task.reward(p, f"{n} pens") == 1.0
    assert task.reward(p, f"work: {n + 1}. Answer: {n}") == 1.0
    assert task.reward(p, f" {n + 1}") == 0.0 and task.reward(p, f" {n}1") == 0.0 and task.reward(p, "none") == 0.0
    assert parse_answer("Answer: 3 then Answer: -4") == -4 and parse_answer("x 5") is None


def test_prompts_are_left_padded_to_one_width():
    task = build_task({"name": "arith"})
    probs = task.problems("train", 6, 0)
    prompts = task.encode_prompts(probs)
    assert prompts.shape == (6, task.prompt_len)
    for row, p in zip(prompts, probs):
        real = row[row != task.tok.pad_id]
        assert real[0] == task.tok.bos_id and task.tok.decode(real[1:]) == p.prompt


def test_hf_tokenizer_with_chat_template_wraps_the_prompt():
    pytest.importorskip("transformers")
    from test_hf import char_tokenizer

    from bench.tasks.hf_tokenizer import HFTokenizer

    tok = char_tokenizer()
    tok.chat_template = "{% for m in messages %}<s>U:{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}|A:{% endif %}"
    task = build_task({"name": "arith"}, HFTokenizer(tok, chat_template=True))
    p = task.problems("train", 1, 0)[0]
    ids = task.encode_prompts([p])[0]
    text = tok.decode(ids[ids != tok.pad_token_id])
    assert text == f"<s>U:{p.prompt}|A:"
    assert task.reward(p, task.completion_text(torch.tensor(tok.encode(p.answer) + [tok.eos_token_id]))) == 1.0
