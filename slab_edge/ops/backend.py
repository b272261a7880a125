"""Which implementation runs: flash-linear-attention's Triton kernels on CUDA when installed, else PyTorch."""

from __future__ import annotations

import functools

import torch

MODES = ("auto", "chunk", "recurrent", "fla")


@functools.cache
def fla_available() -> bool:
    """True when flash-linear-attention (and so Triton) imports; checked once per process."""
    try:
        import fla.ops.gla  # noqa: F401
        import fla.ops.linear_attn  # noqa: F401
    except Exception:  # ImportError, or Triton failing to initialise without a GPU
        return False
    return True


def resolve_mode(mode: str, x: torch.Tensor) -> str:
    """ "auto" -> "fla" for CUDA tensors when fla imports, else "chunk"; other modes pass through."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        return "fla" if x.is_cuda and fla_available() else "chunk"
    return mode
