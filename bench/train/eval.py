"""Held-out evaluation: exact-match accuracy of greedy answers and the loss on eval batches.

Greedy decoding here runs the trainer's own model in the trainer's precision: it measures what the
trained weights know, independently of any generator engine. By default every token recomputes the
whole sequence (the reference). `eval_kv_cache=true` decodes with an eval-only KV cache instead
(fp32 storage, so the trainer's K/V values are kept exactly): the same weights and precision, only
the shapes of the forwards change, so logits differ in the last bits of fp32 summation order (and a
current-scaled FP8 trainer scales each new token alone). Why: recompute costs O(N^2) forwards for an
N-token answer: a 128-token copy eval of 100 problems is ~4 TFLOP recomputed against ~40 GFLOP cached
(2 x 0.8M parameters per token fed; tiny model).
"""
from __future__ import annotations

import torch

from bench.models import new_kv_cache
from bench.models.lm_loss import masked_ce_sum
from bench.tasks import Task

EVAL_SEED = 1234  # the same held-out problems for every run and seed, so runs compare


@torch.no_grad()
def eval_loss(model, task: Task, ctx_fn, device, batches: int = 4, batch_size: int = 64) -> float:
    total, count = 0.0, 0
    for b in range(batches):
        inputs, targets, mask = (t.to(device) for t in task.lm_batch("eval", batch_size, EVAL_SEED + b))
        with ctx_fn():
            logits = model(inputs)
        ce_sum, n = masked_ce_sum(logits, targets, mask)
        total += float(ce_sum)
        count += int(n)
    return total / max(count, 1)


@torch.no_grad()
def greedy_answers(model, task: Task, prompts: torch.Tensor, ctx_fn, max_new: int, kv_cache: bool = False) -> list[str]:
    """Greedy completions of `prompts`, up to `max_new` tokens each (finished rows pad with EOS).
    kv_cache: the prompt forward once into an eval-only cache, then one token per forward; else
    every token recomputes the whole sequence."""
    B, P = prompts.shape
    cache = (new_kv_cache(getattr(model, "module", model).cfg, B, P + max_new, torch.float32, prompts.device)
             if kv_cache else None)
    seq = prompts
    done = torch.zeros(B, dtype=torch.bool, device=prompts.device)
    for t in range(max_new):
        with ctx_fn():
            if cache is None:
                logits = model(seq)
            else:  # position of the first token fed: 0 for the prompt, then the last token's
                logits = model(seq[:, -1:] if t else seq, cache=cache, pos=P + t - 1 if t else 0)
        nxt = torch.where(done, torch.full_like(done, task.eos_id, dtype=torch.long), logits[:, -1].argmax(-1))
        seq = torch.cat([seq, nxt[:, None]], 1)
        done |= nxt == task.eos_id
        if done.all():
            break
    return [task.completion_text(s[P:]) for s in seq]


def evaluate(model, task: Task, ctx_fn, device, n_problems: int = 200, kv_cache: bool = False) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        out = {"eval/loss": eval_loss(model, task, ctx_fn, device)}
        if task.prompt_len > 0:
            probs = task.problems("eval", n_problems, EVAL_SEED)
            prompts = task.encode_prompts(probs).to(device)
            answers = greedy_answers(model, task, prompts, ctx_fn, task.seq_len - task.prompt_len, kv_cache)
            out.update(answer_scores(task, probs, answers))
        return out
    finally:
        model.train(was_training)


def answer_scores(task: Task, probs, answers) -> dict[str, float]:
    """eval/<task>/accuracy (the task's `accuracy`, exact match, where it defines one; else its
    reward) and, for a task with several scores (bench/tasks/longstr.py), eval/<task>/<score>."""
    acc = getattr(task, "accuracy", task.reward)
    out = {f"eval/{task.name}/accuracy": sum(acc(p, a) for p, a in zip(probs, answers)) / len(probs)}
    if hasattr(task, "scores"):
        rows = [task.scores(p, a) for p, a in zip(probs, answers)]
        out.update({f"eval/{task.name}/{k}": sum(r[k] for r in rows) / len(rows) for k in rows[0] if k != "exact"})
    return out
