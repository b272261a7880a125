"""The top-level fields of an ONNX file without the onnx package (torch-free, for the device): opset imports,
model-local functions and metadata_props, read from the protobuf wire format of the memory-mapped file. The
graph is skipped unread, so this costs the same for a 1 KB and a 1 GB model and never runs the model (ONNX
Runtime would need every custom-op library the graph uses just to open it).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

__all__ = ["OnnxHeader", "read_onnx_header"]

# ModelProto / OperatorSetIdProto / StringStringEntryProto / FunctionProto field numbers (onnx/onnx.proto)
_MODEL_OPSET_IMPORT, _MODEL_METADATA_PROPS, _MODEL_FUNCTIONS = 8, 14, 25
_OPSET_DOMAIN, _ENTRY_KEY, _ENTRY_VALUE = 1, 1, 2
_FUNCTION_NAME, _FUNCTION_DOMAIN = 1, 10


@dataclass
class OnnxHeader:
    domains: set[str] = field(default_factory=set)  #: opset domains the model imports ("" = ai.onnx)
    functions: set[tuple[str, str]] = field(default_factory=set)  #: (domain, name) of model-local functions
    metadata: dict[str, str] = field(default_factory=dict)  #: metadata_props, verbatim


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
            if pos + size > end:
                raise ValueError("truncated protobuf field")
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


def read_onnx_header(path: str | os.PathLike) -> OnnxHeader:
    """The header of the ONNX file at `path`.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not a ModelProto (empty, truncated, another format).
    """
    header = OnnxHeader()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            for number, value in _fields(buf, 0, len(buf)):
                if not isinstance(value, tuple):
                    continue
                if number == _MODEL_OPSET_IMPORT:
                    header.domains.add(_strings(buf, value, (_OPSET_DOMAIN,)).get(_OPSET_DOMAIN, ""))
                elif number == _MODEL_FUNCTIONS:
                    names = _strings(buf, value, (_FUNCTION_NAME, _FUNCTION_DOMAIN))
                    header.functions.add((names.get(_FUNCTION_DOMAIN, ""), names.get(_FUNCTION_NAME, "")))
                elif number == _MODEL_METADATA_PROPS:
                    entry = _strings(buf, value, (_ENTRY_KEY, _ENTRY_VALUE))
                    header.metadata[entry.get(_ENTRY_KEY, "")] = entry.get(_ENTRY_VALUE, "")
        except IndexError:
            raise ValueError("truncated protobuf") from None
    return header
