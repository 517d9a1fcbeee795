"""Checkpoint tests work on tiny tensors: one intra-op thread avoids thread start-up costs that dominate
them on a busy 2-core machine (bf16 ops were 10 ms a call with 2 threads)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
