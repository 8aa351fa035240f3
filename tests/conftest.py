import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")
# One intra-op thread: the tests' tensors are tiny, so a second thread buys synchronisation, not speed
# (on a loaded 2-core host a file took twice as long with 2); the in-process recipe runs set 1 anyway
# (threads=1 in helpers.QUIET), and every test should see the same count whatever ran before it.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

