"""The picture behind a mismatch spike: generator vs trainer log-prob per token, worst sequence."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from bench.rl.mismatch import sequence_errors, worst_sequence  # noqa: E402


def plot_worst_sequence(lp_gen: torch.Tensor, lp_train: torch.Tensor, mask: torch.Tensor, path: Path, step: int) -> Path:
    """Pick the sequence with the largest mean exp(|r|) and plot lp_g, lp_t and r per token."""
    errs = sequence_errors(lp_gen, lp_train, mask)
    per_seq = errs["seq_err"]
    i = worst_sequence(lp_gen, lp_train, mask)
    valid = mask[i].bool().cpu()
    g, t = lp_gen[i].float().cpu()[valid], lp_train[i].float().cpu()[valid]
    fig, (a0, a1) = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True)
    a0.plot(g.numpy(), "o-", label="generator lp_g")
    a0.plot(t.numpy(), "s--", label="trainer lp_t")
    a0.set_ylabel("log-prob")
    a0.legend()
    a0.set_title(f"step {step}: worst sequence #{i} (mean exp|r| = {float(per_seq[i]):.4f})")
    a1.bar(range(len(g)), (t - g).numpy())
    a1.set_ylabel("r = lp_t - lp_g")
    a1.set_xlabel("response token")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
