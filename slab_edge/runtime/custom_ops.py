"""The slab custom-op library in ONNX Runtime sessions (torch-free, onnx-free).

A model exported with `--custom-ops ort` or `trt` holds fused SLA nodes (slab_edge.native.OP_TYPE, domain
slab). Before a session is created, `prepare_session_options` reads the model file's header (opset imports,
model-local functions, metadata: slab_edge.runtime.onnx_header) and registers the custom-op library when the
model uses the op: the one given, else the built one (slab_edge.native.find_library: "ort-cuda" for the CUDA
execution provider, "ort" otherwise). Without a library an "ort" file still runs (ONNX Runtime inlines its
function body); a "trt" file has no function body, and that is one clear error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from slab_edge.errors import BackendError, InputError
from slab_edge.native import OP_DOMAIN, OP_TYPE, find_library
from slab_edge.runtime.metadata import PREFIX
from slab_edge.runtime.onnx_header import read_onnx_header

__all__ = ["CustomOpUse", "prepare_session_options", "read_custom_op_use", "register_library"]


@dataclass
class CustomOpUse:
    """What an ONNX file says about the slab custom op."""

    domains: set[str] = field(default_factory=set)  #: opset domains it imports
    function_body: bool = False  #: carries a model-local function for the slab op
    declared: str | None = None  #: its slab_edge.custom_ops metadata ("none" | "ort" | "trt"), if any

    @property
    def uses_op(self) -> bool:
        return OP_DOMAIN in self.domains or self.declared in ("ort", "trt")


def read_custom_op_use(path: str | os.PathLike) -> CustomOpUse:
    """What the ONNX file at `path` says about the slab op (its header only; slab_edge.runtime.onnx_header).

    A file that is not a readable ModelProto gives an empty CustomOpUse: ONNX Runtime reports it properly.
    """
    try:
        header = read_onnx_header(path)
    except (OSError, ValueError):
        return CustomOpUse()
    return CustomOpUse(
        domains=header.domains,
        function_body=(OP_DOMAIN, OP_TYPE) in header.functions,
        declared=header.metadata.get(PREFIX + "custom_ops"),
    )


def register_library(options, library: str | os.PathLike) -> Path:
    """Register the custom-op library at `library` in an onnxruntime.SessionOptions.

    Raises:
        InputError: the file does not exist.
        BackendError: ONNX Runtime cannot load it (not a custom-op library, another ABI, a runtime older
            than the API the library was built for).
    """
    library = Path(library)
    if not library.is_file():
        raise InputError(f"custom-op library not found: {library}")
    try:
        options.register_custom_ops_library(str(library))
    except Exception as err:  # ORT raises its pybind Fail / RuntimeError types
        text = " ".join(str(err).split())
        if "RegisterCustomOps" in text and "symbol" in text:
            problem = f"{library} is not an ONNX Runtime custom-op library (no RegisterCustomOps)"
        else:
            problem = f"ONNX Runtime cannot load the custom-op library {library}: {text[:300]}"
        raise BackendError(problem) from None
    return library


def prepare_session_options(
    options, model: str | os.PathLike, providers: list[str], library: str | os.PathLike | None = None
) -> Path | None:
    """Register the slab custom-op library in `options` if `model` needs it; returns the library used.

    Args:
        options: the onnxruntime.SessionOptions the session will be created with.
        model: the .onnx file.
        providers: the session's execution providers (the CUDA EP takes the "ort-cuda" build if built).
        library: a library to register whatever the model holds (--custom-op-library).

    Raises:
        InputError / BackendError: see register_library; BackendError also for a model whose slab nodes
            have no function body when no library is found.
    """
    if library is not None:
        return register_library(options, library)
    use = read_custom_op_use(model)
    if not use.uses_op:
        return None
    found = None
    if "CUDAExecutionProvider" in providers:
        found = find_library("ort-cuda")
    found = found or find_library("ort")
    if found is not None:
        return register_library(options, found)
    if use.function_body:
        return None  # ONNX Runtime inlines the function body: standard ops, slower, same results
    raise BackendError(
        f"{Path(model).name} holds {OP_TYPE} nodes without a function body (exported with --custom-ops trt, "
        "for TensorRT): ONNX Runtime needs the slab custom-op library; build it with `slab-edge build-ops "
        "ort` or pass --custom-op-library, or export with --custom-ops ort or none"
    )
