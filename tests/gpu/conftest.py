"""Skips for the GPU tests: every test here needs CUDA; those using fla's kernels also need fla."""

from __future__ import annotations

import pytest
import torch

from slab_edge.ops.backend import fla_available


@pytest.fixture
def needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (run on the GPU machine, see DEVICE.md)")


@pytest.fixture
def needs_cuda_and_fla(needs_cuda):
    if not fla_available():
        pytest.skip("needs flash-linear-attention: pip install flash-linear-attention==0.6.0 fla-core==0.6.0")


@pytest.fixture
def no_tf32():
    """Exact fp32 on the GPU (TF32 convolutions are on by default; cuBLAS matmuls off): for comparisons
    with a CPU or another GPU path."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
