"""The policy GRPO starts from: a pretrain checkpoint, or a short cached supervised warm-up.

RL from a random init gets no reward and so no signal; from a converged model it has nothing to
improve. A short warm-up (default a few dozen steps of supervised training on the task in fp32)
lands in between. It is precision-independent on purpose: every cell of a precision matrix
starts from the same weights. The result is cached under runs/cache/ keyed by everything that
determines it, so a sweep trains it once.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch

from bench.train import checkpoint as ckpt
from bench.core.errors import BadInput
from bench.models.lm_loss import masked_cross_entropy
from bench.models.decoder import Transformer
from bench.train.trainer import OptimConfig, lr_lambda


def load_policy_weights(model: Transformer, path: str) -> None:
    """Load the model weights of a pretrain run dir (its latest checkpoint) or checkpoint file."""
    p = Path(path)
    if p.is_dir():
        found = ckpt.latest(p / "checkpoints") if (p / "checkpoints").is_dir() else ckpt.latest(p)
        if found is None:
            raise BadInput(f"init_from={path} holds no checkpoint (expected checkpoints/step_*.pt)")
        p = found
    state = ckpt.load(p)
    weights = state.get("trainer", state).get("model", state)
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    if missing:
        raise BadInput(f"init_from={path} does not match model={model.cfg.name} (missing {missing[0]} ...)")
    shapes = [k for k in own if weights[k].shape != own[k].shape]
    if shapes:
        raise BadInput(f"init_from={path}: {shapes[0]} has shape {tuple(weights[shapes[0]].shape)}, "
                       f"model expects {tuple(own[shapes[0]].shape)}")
    model.load_state_dict({k: weights[k] for k in own})


def supervised_warmup(model: Transformer, task, steps: int, batch_size: int, lr: float, seed: int,
                      device, cache_dir: Path | None) -> dict:
    """Train `model` in place for `steps` supervised steps (fp32); cached by a key of its inputs."""
    key = json.dumps({"model": model.cfg.__dict__, "task": {k: v for k, v in vars(task).items() if k != "data" and not k.startswith("_")},
                      "steps": steps, "batch": batch_size, "lr": lr, "seed": seed}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"warmstart_{task.name}_{digest}.pt" if cache_dir else None
    if cache is not None and cache.is_file():
        try:
            model.load_state_dict(ckpt.load(cache)["model"])
            return {"warmstart": str(cache), "cached": True}
        except BadInput:
            pass  # a corrupted cache entry is simply rebuilt
    torch.manual_seed(seed)
    model.reset_parameters()
    cfg = OptimConfig(lr=lr, warmup_steps=max(1, steps // 10))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, steps))
    model.train()
    for step in range(steps):
        inputs, targets, mask = (t.to(device) for t in task.lm_batch("train", batch_size, 7_000_000 + seed * 10_007 + step))
        loss = masked_cross_entropy(model(inputs), targets, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        ckpt.save_file(cache, {"model": model.state_dict()})
    return {"warmstart": str(cache) if cache else "uncached", "cached": False}
