"""`load(path)`: a ready session for a model file, on the backend its file type needs.

The one module that knows every backend. Imports run one way: session (Session, TensorSpec) <- the backend
sessions (onnxruntime_session, tensorrt_session) <- loader; the backends' own libraries (onnxruntime,
tensorrt, cuda-python) are imported only when a model that needs them is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from slab_edge.errors import InputError
from slab_edge.runtime.onnxruntime_session import OnnxRuntimeSession
from slab_edge.runtime.session import Session
from slab_edge.runtime.tensorrt_session import TensorRTSession

#: file suffix -> backend name
SUFFIXES = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt", ".trt": "tensorrt"}


def backend_for(path: str | os.PathLike) -> str:
    """Backend name for a model file, from its suffix; unknown suffixes raise InputError."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        known = ", ".join(sorted(SUFFIXES))
        got = suffix or "(no suffix)"
        raise InputError(f"{path}: unknown model file type {got!r}; expected one of {known}")
    return SUFFIXES[suffix]


def load(path: str | os.PathLike, **options: Any) -> Session:
    """Load a model file and return a ready session.

    Args:
        path: `.onnx` (ONNX Runtime) or `.engine` / `.plan` / `.trt` (TensorRT or TensorRT-RTX).
        **options: backend options.
            ONNX Runtime: provider ("cpu" | "cuda" | "tensorrt" or a full EP name), provider_options (dict),
            threads (intra-op), inter_op_threads, graph_optimization ("disable" | "basic" | "extended" |
            "all"), session_options (a ready ort.SessionOptions), custom_op_library (the slab
            custom-op library; default: the built one when the model holds fused SLA nodes).
            TensorRT: memory ("cuda-python" | "pycuda"), device (GPU index), module ("tensorrt" |
            "tensorrt_rtx"; default: the sidecar's builder flavour), check_sidecar (default True),
            dla_core (overrides the sidecar).

    Raises:
        InputError: missing file, unknown file type.
        BackendError: the backend is not installed, rejects the file (corrupt, truncated), or the engine
            was built for another TensorRT version or GPU.
    """
    path = Path(path)
    backend = backend_for(path)
    if not path.exists():
        raise InputError(f"model file not found: {path}")
    if not path.is_file():
        raise InputError(f"model path is not a file: {path}")
    if backend == "onnxruntime":
        return OnnxRuntimeSession(path, **options)
    return TensorRTSession(path, **options)
