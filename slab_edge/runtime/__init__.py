"""Torch-free on-device runtime: sessions for ONNX Runtime and TensorRT, preprocessing, infer/bench/compare.

Imports only numpy, PIL and the chosen backend (lazily: onnxruntime, tensorrt / tensorrt_rtx, cuda-python
or pycuda are imported when a model that needs them is loaded).

    from slab_edge.runtime import load, transform_for
    with load("model.onnx", threads=2) as session:
        batch = transform_for(session).batch(["cat.jpg", "dog.png"])     # [2, 3, H, W] float32
        logits = session.run(batch)["logits"]
"""

from __future__ import annotations

from slab_edge.runtime.loader import backend_for, load
from slab_edge.runtime.metadata import decode_metadata, encode_metadata, read_model_metadata, sidecar_path
from slab_edge.runtime.preprocess import EvalTransform, load_image, preprocess_image, to_rgb, transform_for
from slab_edge.runtime.session import Session, TensorSpec

__all__ = [
    "EvalTransform",
    "Session",
    "TensorSpec",
    "backend_for",
    "decode_metadata",
    "encode_metadata",
    "load",
    "load_image",
    "preprocess_image",
    "read_model_metadata",
    "sidecar_path",
    "to_rgb",
    "transform_for",
]
