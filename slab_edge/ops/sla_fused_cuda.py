"""The CUDA kernel of `torch.ops.slab.linear_attention`: csrc/sla_attention_cuda.cu through ctypes.

`register()` loads the "torch-cuda" library (`slab_edge.native.find_library`; built with
`slab_edge.native.build` when missing), registers it as the operator's CUDA kernel and tells `sla_fused` that
CUDA has a kernel. `sla_fused.use_fused` calls it the first time it sees a CUDA tensor, so importing
slab_edge never touches ctypes or CUDA.

Each call allocates its output and the kernel's workspace with torch's allocator on the inputs' device and
enqueues the kernel on torch's current stream of that device; nothing synchronises, so the op works in eager
mode, as an opaque call under torch.compile, and inside CUDA graph capture.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from pathlib import Path

import torch

from slab_edge.errors import BackendError, InputError
from slab_edge.ops.sla_fused import KERNEL_MAX_DIM, linear_attention, mark_kernel_available

__all__ = ["SlaShape", "bind", "forward", "library", "register"]

#: torch dtype -> slab_dtype of csrc/sla_attention.h
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
#: status codes of csrc/sla_attention.h
CUDA_ERROR_BASE = 1000


class SlaShape(ctypes.Structure):
    """slab_sla_shape: B, N, H, D, Dv."""

    _fields_ = [(name, ctypes.c_int64) for name in ("batch", "tokens", "heads", "head_dim", "value_dim")]


def bind(path: str | Path) -> ctypes.CDLL:
    """Open a library that exports the C ABI of csrc/sla_attention.h and declare its entry points."""
    try:
        lib = ctypes.CDLL(str(path))
        workspace_bytes = lib.slab_sla_cuda_workspace_bytes
        run = lib.slab_sla_cuda_forward
        status_string = lib.slab_sla_status_string
    except (OSError, AttributeError) as error:
        raise BackendError(f"cannot use the fused SLA library {path}: {error}") from None
    workspace_bytes.argtypes, workspace_bytes.restype = [SlaShape], ctypes.c_size_t
    pointer = ctypes.c_void_p
    run.argtypes = [ctypes.c_int, pointer, pointer, pointer, pointer, SlaShape, ctypes.c_float, pointer,
                    ctypes.c_size_t, pointer]  # fmt: skip
    run.restype = ctypes.c_int
    status_string.argtypes, status_string.restype = [ctypes.c_int], ctypes.c_char_p
    return lib


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dtype not in DTYPES:
        raise InputError(
            f"linear_attention: the fused CUDA kernel takes float32, float16 or bfloat16, got {q.dtype}"
        )
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise InputError(
            "linear_attention: expected q, k [B, N, H, D] and v [B, N, H, Dv], got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not 1 <= q.shape[-1] <= KERNEL_MAX_DIM or not 1 <= v.shape[-1] <= KERNEL_MAX_DIM:
        raise InputError(
            f"linear_attention: head dims must be 1..{KERNEL_MAX_DIM} for the fused CUDA kernel, "
            f"got D={q.shape[-1]}, Dv={v.shape[-1]}"
        )
    if not q.device == k.device == v.device:
        devices = f"{q.device}, {k.device}, {v.device}"
        raise InputError(f"linear_attention: q, k, v on different devices ({devices})")


def forward(lib: ctypes.CDLL, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float, stream: int):
    """out [B, N, H, Dv] in q's dtype from q, k [B, N, H, D] and v [B, N, H, Dv] through `lib` (see bind), on
    `stream` (a cudaStream_t as an int; 0 = default). k and v are cast to q's dtype (the kernel has one I/O
    dtype) and made contiguous. Output and workspace come from torch's allocator on q's device."""
    _check(q, k, v)
    q, k, v = (t.to(q.dtype).contiguous() for t in (q, k, v))
    out = torch.empty_like(v)
    if out.numel() == 0:
        return out
    shape = SlaShape(*q.shape, v.shape[-1])
    workspace_bytes = _workspace_bytes(lib, (*q.shape, v.shape[-1]))
    workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=q.device) if workspace_bytes else None
    status = lib.slab_sla_cuda_forward(
        DTYPES[q.dtype], q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), shape, float(eps),
        None if workspace is None else workspace.data_ptr(), workspace_bytes, stream or None,
    )  # fmt: skip
    if status:
        what = lib.slab_sla_status_string(status).decode(errors="replace").splitlines()[0]
        kind = "CUDA error" if status > CUDA_ERROR_BASE else "error"
        raise BackendError(f"fused SLA kernel failed ({kind} {status}): {what}")
    return out


@functools.lru_cache(maxsize=256)
def _workspace_bytes(lib: ctypes.CDLL, shape: tuple[int, ...]) -> int:
    return lib.slab_sla_cuda_workspace_bytes(SlaShape(*shape))


_lock = threading.Lock()
_library: ctypes.CDLL | None = None


def library() -> ctypes.CDLL:
    """The bound "torch-cuda" library, built on first use when it is missing."""
    global _library
    with _lock:
        if _library is None:
            from slab_edge.native import find_library

            path = find_library("torch-cuda")
            if path is None:
                from slab_edge.native.build import build

                path = build(["torch-cuda"])["torch-cuda"]
            _library = bind(path)
        return _library


def _cuda_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    if q.device.index != torch.cuda.current_device():  # the kernel launches on the current device
        with torch.cuda.device(q.device):
            return _cuda_kernel(q, k, v, eps)
    return forward(library(), q, k, v, eps, torch.cuda.current_stream().cuda_stream)


_registered = False


def register() -> None:
    """Load (or build) the library and make it the CUDA kernel of linear_attention; idempotent. Raises
    BackendError (or the build's error) when the library cannot be had."""
    global _registered
    library()
    with _lock:
        if not _registered:
            linear_attention.register_kernel("cuda")(_cuda_kernel)
            _registered = True
    mark_kernel_available("cuda")
