"""One optimizer step and what surrounds it: the precision machinery, the process group, checkpoints, eval.

  trainer.py      Trainer.step: autocast forward, (scaled) backward, clip, the policy's decision
  distributed.py  torchrun: DDP or FSDP2, rank 0 the only writer, decisions broadcast
  checkpoint.py   resumable state, written atomically with a checksum
  eval.py         held-out greedy accuracy and loss on the trainer's own model

Imports models, numerics, perf, precision, tasks, core.
"""
