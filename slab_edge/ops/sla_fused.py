"""The fused SLA core as one PyTorch operator: `torch.ops.slab.linear_attention(q, k, v, eps)`.

Layout [B, N, H, D] (tokens first, heads split off the channel axis: what a Linear's output reshapes to with
no transpose), the contract of slab_edge/native/csrc/sla_attention.h:

    out[b, n, h] = (q[b, n, h] @ sum_m k[b, m, h]^T v[b, m, h]) / (q[b, n, h] . sum_m k[b, m, h] + eps)

The CPU implementation below is the PyTorch reference (float32 maths, output in q's dtype). Other backends
register kernels for the same operator (`linear_attention.register_kernel("cuda")`), and the ONNX exporter
translates it into one custom node (slab_edge.native.OP_TYPE). Being one opaque operator, it also survives
torch.compile as a single call.

The CUDA kernel (ops/sla_fused_cuda.py) is loaded the first time `use_fused` sees a CUDA tensor outside
torch.compile tracing (run a model once eagerly before compiling it, or call sla_fused_cuda.register()); if
it cannot be loaded or built, auto mode keeps the MatMul form and says why once (warnings.warn).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

from slab_edge.ops.sla import SLA_EPS

__all__ = [
    "FUSED_MODES",
    "KERNEL_DTYPES",
    "KERNEL_MAX_DIM",
    "fused_sla",
    "linear_attention",
    "linear_attention_reference",
    "load_kernel",
    "mark_kernel_available",
    "use_fused",
]

#: "auto": the fused op where a kernel for the device is registered and no gradient is needed (inference);
#: "always": wherever SLA runs (export with custom ops; the CPU then runs the reference); "never": the
#: unfused MatMul form everywhere.
FUSED_MODES = ("auto", "always", "never")
#: what the native kernels take (csrc/sla_attention.h: one I/O dtype, D and Dv up to SLAB_SLA_MAX_DIM); auto
#: mode sends other inputs to the MatMul form
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KERNEL_MAX_DIM = 128
_mode = "auto"
_kernel_devices: set[str] = set()
#: device types whose kernel loading was tried (loaded or not), so a failure is tried and reported once
_load_tried: set[str] = set()


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


def load_kernel(device_type: str) -> bool:
    """Whether `device_type` has a fused kernel; for "cuda", loads (or builds) it on the first call. A failure
    is reported once with its reason (warnings.warn) and not retried."""
    if device_type != "cuda" or device_type in _kernel_devices or device_type in _load_tried:
        return device_type in _kernel_devices
    _load_tried.add(device_type)
    try:
        from slab_edge.ops.sla_fused_cuda import register

        register()
    except Exception as error:  # any failure (no nvcc, no driver, a bad library) means: the MatMul form
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        warnings.warn(
            f"fused SLA: no CUDA kernel ({type(error).__name__}: {reason}); SLA layers use the MatMul form",
            RuntimeWarning,
            stacklevel=3,
        )
    return device_type in _kernel_devices


def use_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, head_dim: int | None = None) -> bool:
    """Whether an SLA layer should call `linear_attention` for these inputs under the current mode.

    In auto mode: a kernel for the device, no gradient needed, a dtype in KERNEL_DTYPES and (when the layer
    passes it) head_dim <= KERNEL_MAX_DIM. The first CUDA tensor seen outside torch.compile tracing loads the
    CUDA kernel. Never while torch.fx traces symbolically (no device to decide on).
    """
    if _mode == "never" or isinstance(q, torch.fx.Proxy):  # a torch.fx trace records the portable graph
        return False
    if q.device.type == "cuda" and not torch.compiler.is_compiling():
        load_kernel("cuda")
    if _mode == "always":
        return True
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    supported = q.dtype in KERNEL_DTYPES and (head_dim is None or head_dim <= KERNEL_MAX_DIM)
    return q.device.type in _kernel_devices and not needs_grad and supported


def linear_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = SLA_EPS
) -> torch.Tensor:
    """The contract in PyTorch: q, k [B, N, H, D], v [B, N, H, Dv] -> [B, N, H, Dv] contiguous, in q's dtype,
    computed in float32 (float64 for float64 q: the tests' high-precision reference)."""
    compute = torch.promote_types(q.dtype, torch.float32)
    qf, kf, vf = q.to(compute), k.to(compute), v.to(compute)
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
