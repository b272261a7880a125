"""Model tests run tiny reduced-width models: one intra-op thread is as fast as two on an idle machine and
much faster on a loaded one (OpenMP threads spin against other processes). Restored after each module."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
