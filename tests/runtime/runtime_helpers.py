"""Test helpers: tiny ONNX classifiers built with onnx.helper (no torch), images of every PIL mode, a Python
that cannot import torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from slab_edge.runtime.metadata import encode_metadata

LABELS = ["apple", "banana", "cherry", "date", "elder"]


def classifier_weights(num_classes: int = len(LABELS), channels: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((channels, num_classes)).astype(np.float32)
    bias = rng.standard_normal(num_classes).astype(np.float32)
    return weight, bias


def reference_logits(batch: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """What the tiny classifier computes: global average pool -> linear. [B, C, H, W] -> [B, K]."""
    return batch.astype(np.float64).mean(axis=(2, 3)) @ weight + bias


def make_classifier(
    path: Path,
    size: int = 32,
    batch: int | None = None,
    metadata: dict | None = None,
    seed: int = 0,
    channels: int = 3,
    input_name: str = "image",
) -> Path:
    """Write [N, C, size, size] -> GlobalAveragePool -> Flatten -> MatMul + Add -> logits [N, K]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight, bias = classifier_weights(channels=channels, seed=seed)
    n = batch if batch is not None else "batch"
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", [input_name], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["logits"]),
        ],
        "tiny_classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [n, channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, len(LABELS)])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata is None:
        metadata = default_metadata(size, channels, input_name, dynamic=batch is None)
    for key, value in encode_metadata(metadata).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def default_metadata(size: int = 32, channels: int = 3, input_name: str = "image", dynamic: bool = True):
    return {
        "task": "classification",
        "model": "tiny_test_classifier",
        "version": "0.1.0",
        "folded": True,
        "precision": "fp32",
        "input_name": input_name,
        "input_size": [channels, size, size],
        "mean": [0.5] * channels,
        "std": [0.25] * channels,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "labels": LABELS,
        "dynamic_batch": dynamic,
    }


def write_image(path: Path, mode: str = "RGB", size=(40, 30), seed: int = 0, **save_kwargs) -> Path:
    """A random image in PIL `mode` saved to `path` (format from the suffix)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    if mode in ("I;16",):
        image = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif mode == "I":
        image = Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.int32))
    elif mode == "F":
        image = Image.fromarray(rng.random((h, w), dtype=np.float32))
    else:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        if mode == "P":
            image = image.quantize(16)
        elif mode != "RGB":
            image = image.convert(mode)
    image.save(path, **save_kwargs)
    return path


BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys
    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch.") or name in ("timm", "torchvision"):
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, BlockTorch())
    """
)


def run_blocked(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python where importing torch, timm or torchvision fails."""
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )
