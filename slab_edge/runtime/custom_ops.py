"""The slab custom-op library in ONNX Runtime sessions (torch-free, onnx-free).

A model exported with `--custom-ops ort` or `trt` holds fused SLA nodes (slab_edge.native.OP_TYPE, domain
slab). Before a session is created, `prepare_session_options` reads the model file's header (opset imports,
model-local functions, metadata; the graph is skipped unread) and registers the custom-op library when the
model uses the op: the one given, else the built one (slab_edge.native.find_library: "ort-cuda" for the CUDA
execution provider, "ort" otherwise). Without a library an "ort" file still runs (ONNX Runtime inlines its
function body); a "trt" file has no function body, and that is one clear error.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

from slab_edge.errors import BackendError, InputError
from slab_edge.native import OP_DOMAIN, OP_TYPE, find_library
from slab_edge.runtime.metadata import PREFIX

__all__ = ["CustomOpUse", "prepare_session_options", "read_custom_op_use", "register_library"]

# ModelProto / OperatorSetIdProto / StringStringEntryProto / FunctionProto field numbers (onnx.proto)
_MODEL_OPSET_IMPORT, _MODEL_METADATA_PROPS, _MODEL_FUNCTIONS = 8, 14, 25
_OPSET_DOMAIN, _ENTRY_KEY, _ENTRY_VALUE = 1, 1, 2
_FUNCTION_NAME, _FUNCTION_DOMAIN = 1, 10


@dataclass
class CustomOpUse:
    """What an ONNX file says about the slab custom op."""

    domains: set[str] = field(default_factory=set)  #: opset domains it imports
    function_body: bool = False  #: carries a model-local function for the slab op
    declared: str | None = None  #: its slab_edge.custom_ops metadata ("none" | "ort" | "trt"), if any

    @property
    def uses_op(self) -> bool:
        return OP_DOMAIN in self.domains or self.declared in ("ort", "trt")


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, payload) of a protobuf message in buf[start:end]; payload is an int for varints and
    (start, end) for length-delimited fields. Fixed-size fields are skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, value
        elif wire == 2:
            size, pos = _varint(buf, pos)
            yield number, (pos, pos + size)
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _strings(buf, span: tuple[int, int], wanted: tuple[int, ...]) -> dict[int, str]:
    out = {}
    for number, value in _fields(buf, *span):
        if number in wanted and isinstance(value, tuple):
            out[number] = bytes(buf[value[0] : value[1]]).decode("utf-8", "replace")
    return out


def read_custom_op_use(path: str | os.PathLike) -> CustomOpUse:
    """Scan an ONNX file's top-level fields (memory-mapped; the graph is skipped without parsing).

    A file that is not a readable ModelProto gives an empty CustomOpUse: ONNX Runtime reports it properly.
    """
    use = CustomOpUse()
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            for number, value in _fields(buf, 0, len(buf)):
                if not isinstance(value, tuple):
                    continue
                if number == _MODEL_OPSET_IMPORT:
                    use.domains.add(_strings(buf, value, (_OPSET_DOMAIN,)).get(_OPSET_DOMAIN, ""))
                elif number == _MODEL_FUNCTIONS:
                    names = _strings(buf, value, (_FUNCTION_NAME, _FUNCTION_DOMAIN))
                    if (names.get(_FUNCTION_DOMAIN), names.get(_FUNCTION_NAME)) == (OP_DOMAIN, OP_TYPE):
                        use.function_body = True
                elif number == _MODEL_METADATA_PROPS:
                    entry = _strings(buf, value, (_ENTRY_KEY, _ENTRY_VALUE))
                    if entry.get(_ENTRY_KEY) == PREFIX + "custom_ops":
                        use.declared = entry.get(_ENTRY_VALUE)
    except (OSError, ValueError, IndexError):
        return CustomOpUse()
    return use


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
