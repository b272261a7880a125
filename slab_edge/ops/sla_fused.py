"""The fused SLA core as one PyTorch operator: `torch.ops.slab.linear_attention(q, k, v, eps)`.

Layout [B, N, H, D] (tokens first, heads split off the channel axis: what a Linear's output reshapes to with
no transpose), the contract of slab_edge/native/csrc/sla_attention.h:

    out[b, n, h] = (q[b, n, h] @ sum_m k[b, m, h]^T v[b, m, h]) / (q[b, n, h] . sum_m k[b, m, h] + eps)

The CPU implementation below is the PyTorch reference (float32 maths, output in q's dtype). Other backends
register kernels for the same operator (`linear_attention.register_kernel("cuda")`), and the ONNX exporter
translates it into one custom node (slab_edge.native.OP_TYPE). Being one opaque operator, it also survives
torch.compile as a single call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from slab_edge.ops.sla import SLA_EPS

__all__ = [
    "FUSED_MODES",
    "fused_sla",
    "linear_attention",
    "linear_attention_reference",
    "mark_kernel_available",
    "use_fused",
]

#: "auto": the fused op where a kernel for the device is registered and no gradient is needed (inference);
#: "always": wherever SLA runs (export with custom ops; the CPU then runs the reference); "never": the
#: unfused MatMul form everywhere.
FUSED_MODES = ("auto", "always", "never")
_mode = "auto"
_kernel_devices: set[str] = set()


@contextlib.contextmanager
def fused_sla(mode: str) -> Iterator[None]:
    """Within the block, SLA layers take the fused operator according to `mode` (one of FUSED_MODES)."""
    global _mode
    if mode not in FUSED_MODES:
        raise ValueError(f"fused SLA mode must be one of {', '.join(FUSED_MODES)}, got {mode!r}")
    previous, _mode = _mode, mode
    try:
        yield
    finally:
        _mode = previous


def mark_kernel_available(device_type: str) -> None:
    """Called by a backend once it has registered its kernel for `device_type` (e.g. "cuda")."""
    _kernel_devices.add(device_type)


def use_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether an SLA layer should call `linear_attention` for these inputs under the current mode."""
    if _mode == "never":
        return False
    if _mode == "always":
        return True
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    return q.device.type in _kernel_devices and not needs_grad


def linear_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = SLA_EPS
) -> torch.Tensor:
    """The contract in PyTorch: q, k [B, N, H, D], v [B, N, H, Dv] -> [B, N, H, Dv] contiguous, in q's dtype,
    computed in float32."""
    qf, kf, vf = q.float(), k.float(), v.float()
    k_sum = kf.sum(dim=1)  # [B, H, D]
    kv = torch.einsum("bnhd,bnhe->bhde", kf, vf)  # [B, H, D, Dv]
    num = torch.einsum("bnhd,bhde->bnhe", qf, kv)  # [B, N, H, Dv]
    den = torch.einsum("bnhd,bhd->bnh", qf, k_sum).unsqueeze(-1) + eps  # [B, N, H, 1]
    return (num / den).to(q.dtype).contiguous()


@torch.library.custom_op("slab::linear_attention", mutates_args=())
def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = SLA_EPS) -> torch.Tensor:
    """Fused SLA core, see the module docstring. q, k [B, N, H, D], v [B, N, H, Dv] -> [B, N, H, Dv]."""
    return linear_attention_reference(q, k, v, eps)


@linear_attention.register_fake
def _linear_attention_fake(q, k, v, eps=SLA_EPS):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))
