"""Held-out digits accuracy of exported variants against the PyTorch model they came from.

Every backend sees the same tensors: the held-out split of `slab_edge.train.data.load_digits_split`,
preprocessed with the runtime's own transform from the fp32 file's metadata (what a device would do).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class AccuracyRow:
    backend: str  #: "torch" | "onnxruntime fp32" | ...
    accuracy: float  #: top-1 in percent
    agree_with_torch: float  #: percent of images with the same top-1 as PyTorch
    max_abs_vs_torch: float  #: max |logit difference| vs PyTorch
    images: int


def heldout_digits(metadata: dict, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """([N, C, H, W] float32 preprocessed from `metadata`, labels [N]) of the held-out digits split."""
    from slab_edge.export.calibration import digits_split_images, preprocess_batch

    images, labels = digits_split_images("val")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return preprocess_batch(images, metadata), labels


def evaluate_variants(
    torch_model, onnx_files: dict[str, str | os.PathLike], limit: int | None = None, batch_size: int = 64
) -> list[AccuracyRow]:
    """Accuracy of PyTorch and of each ONNX file (name -> path) on the held-out digits."""
    from slab_edge.export.onnx_export import ort_session, torch_logits
    from slab_edge.runtime.metadata import read_model_metadata

    first = next(iter(onnx_files.values()))
    x, labels = heldout_digits(read_model_metadata(Path(first)), limit)
    batches = [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
    reference = np.concatenate([torch_logits(torch_model, b) for b in batches])
    rows = [_row("torch", reference, reference, labels)]
    for name, path in onnx_files.items():
        session = ort_session(path)
        input_name = session.get_inputs()[0].name
        logits = np.concatenate([session.run(None, {input_name: b})[0] for b in batches])
        rows.append(_row(name, logits, reference, labels))
    return rows


def _row(name: str, logits: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> AccuracyRow:
    top = logits.argmax(-1)
    return AccuracyRow(
        backend=name,
        accuracy=float((top == labels).mean() * 100),
        agree_with_torch=float((top == reference.argmax(-1)).mean() * 100),
        max_abs_vs_torch=float(np.abs(logits.astype(np.float32) - reference).max()),
        images=len(labels),
    )


def format_table(rows: list[AccuracyRow]) -> str:
    lines = [
        f"{'backend':<22} {'top-1 %':>8} {'agree w/ torch %':>17} {'max|diff| vs torch':>19}",
        "-" * 69,
    ]
    for r in rows:
        lines.append(
            f"{r.backend:<22} {r.accuracy:>8.2f} {r.agree_with_torch:>17.2f} {r.max_abs_vs_torch:>19.2e}"
        )
    lines.append(f"({rows[0].images} held-out digits)")
    return "\n".join(lines)
