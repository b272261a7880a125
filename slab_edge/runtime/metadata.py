"""The contract between export and runtime: ONNX metadata_props keys and the engine sidecar JSON.

Export writes these; the device reads them, so the model file alone carries its preprocessing, labels and
provenance. Values are strings in ONNX (lists and numbers JSON-encoded); `read_model_metadata` decodes them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "slab_edge."

#: key -> (JSON-encoded?, meaning)
KEYS: dict[str, tuple[bool, str]] = {
    "task": (False, "classification | lm-prefill | lm-decode | lm-genai (one graph for onnxruntime-genai)"),
    "model": (False, "registered model name, e.g. slab_deit_tiny_patch16_224"),
    "version": (False, "slab-edge version that exported the file"),
    "folded": (True, "true if no norm is left: every norm was folded before export (see unfolded_norms)"),
    "folded_norms": (True, "how many norms were folded into their neighbours (absent: unknown)"),
    "unfolded_norms": (True, '{norm type: count} left in the graph, e.g. {"LayerNorm": 9}; {} when folded'),
    "weights": (
        False,
        "checkpoint | random (initialised, never trained) | module (a module given to the API)",
    ),
    "weights_sha256": (
        False,
        "digest of the checkpoint's weights before folding (export.checkpoint.state_dict_sha256)",
    ),
    "precision": (False, "fp32 | fp16 | int8"),
    "input_name": (False, "name of the image input tensor"),
    "input_size": (True, "[C, H, W] the model was exported for"),
    "mean": (True, "[r, g, b] normalisation mean (0-1 scale)"),
    "std": (True, "[r, g, b] normalisation std (0-1 scale)"),
    "interpolation": (False, "resize filter: bicubic | bilinear | nearest"),
    "crop_pct": (True, "center-crop fraction used at evaluation"),
    "labels": (True, "list of class names, index = class id"),
    "dynamic_batch": (True, "true if the batch dimension is dynamic"),
    "custom_ops": (False, "none | ort | trt: fused SLA nodes (ort: with a function body; trt: plugin only)"),
    # language models (issue 5)
    "tokenizer": (False, "byte | bpe:<file name beside the model>"),
    "state_layout": (True, "list of {name, shape, dtype} of the recurrent-state inputs/outputs per layer"),
    "max_prompt_len": (True, "longest prompt the prefill graph accepts (null = any)"),
    "vocab_size": (True, "vocabulary size"),
    "ops": (False, "standard (ONNX ops only) | ort (ONNX Runtime contrib ops: export-lm --ops ort)"),
    "min_onnxruntime": (False, "oldest ONNX Runtime version that runs the graph, e.g. 1.25.1"),
    "tokenizer_sha256": (
        False,
        "digest of the tokenizer.json beside a genai export (slab_edge.runtime.genai)",
    ),
}

SIDECAR_SUFFIX = ".json"


def encode_metadata(values: dict[str, Any]) -> dict[str, str]:
    """{key: value} -> {"slab_edge.key": str} for onnx metadata_props. Unknown keys raise KeyError."""
    out = {}
    for key, value in values.items():
        if key not in KEYS:
            raise KeyError(f"unknown slab-edge metadata key {key!r}")
        is_json, _ = KEYS[key]
        out[PREFIX + key] = json.dumps(value) if is_json else str(value)
    return out


def decode_metadata(props: dict[str, str]) -> dict[str, Any]:
    """onnx metadata_props (or a sidecar's "onnx_metadata") -> {key: decoded value}; foreign keys ignored."""
    out: dict[str, Any] = {}
    for full_key, raw in props.items():
        if not full_key.startswith(PREFIX):
            continue
        key = full_key[len(PREFIX) :]
        is_json = KEYS.get(key, (False, ""))[0]
        out[key] = json.loads(raw) if is_json else raw
    return out


@dataclass
class EngineSidecar:
    """What `<engine>.json` holds next to a serialized TensorRT / TensorRT-RTX engine.

    builder: {"flavour": "tensorrt" | "tensorrt_rtx", "version": "10.3.0"}
    gpu: {"name": ..., "compute_capability": "8.7"} (the build machine's; "none" for CPU-only RTX builds)
    precision: "fp32" | "fp16" | "int8" | "strongly-typed"
    profiles: [{input name: {"min": [...], "opt": [...], "max": [...]}}]
    onnx_metadata: the ONNX file's metadata_props, verbatim (slab_edge.* keys)
    plugins: the plugin libraries the engine needs, loaded before it is deserialized:
        [{"library": file name, "sha256": ..., "plugins": [{"name", "version", "namespace"}],
          "serialized_in_engine": true when the library travels inside a version-compatible plan}]
    """

    builder: dict[str, str]
    gpu: dict[str, str]
    precision: str
    profiles: list[dict[str, dict[str, list[int]]]]
    onnx_metadata: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    onnx_file: str = ""
    onnx_sha256: str = ""
    plugins: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EngineSidecar:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """Where an engine's sidecar lives: the engine's file name plus SIDECAR_SUFFIX (`model.engine.json`)."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def read_metadata_props(onnx_path: str | os.PathLike) -> dict[str, str]:
    """An ONNX file's metadata_props verbatim (with the `onnx` package when installed, else from the file's
    header: slab_edge.runtime.onnx_header, which needs no backend, so no custom-op library either)."""
    try:
        import onnx
    except ImportError:
        from slab_edge.runtime.onnx_header import read_onnx_header

        try:
            return read_onnx_header(onnx_path).metadata
        except ValueError as err:
            raise ValueError(f"{onnx_path} is not an ONNX model ({err})") from None
    model = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def read_model_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Decoded slab_edge.* metadata of a model file, without loading it into a backend.

    `.onnx`: its metadata_props; `.engine` / `.plan`: the sidecar's onnx_metadata ({} without a sidecar).
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return decode_metadata(read_metadata_props(path))
    side = sidecar_path(path)
    if not side.exists():
        return {}
    return decode_metadata(EngineSidecar.from_json(json.loads(side.read_text())).onnx_metadata)
