"""Real images for parity checks and INT8 calibration, preprocessed the way the device will do it.

Preprocessing is the runtime's own (`slab_edge.runtime.preprocess.EvalTransform` built from the ONNX
metadata), so calibration statistics are taken on exactly the tensors the device feeds the model.
Sources: an image folder (searched recursively) or "digits" (scikit-learn's 1,797 real 8x8 handwritten
digits, no download; calibration uses the training split of `slab_edge.train.data.load_digits_split`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slab_edge.errors import InputError

DIGITS = "digits"


def digits_images(indices: Sequence[int] | None = None) -> tuple[list, np.ndarray]:
    """scikit-learn digits as RGB PIL images (8x8, gray levels 0-16 scaled to 0-255) and their labels.

    Args:
        indices: which samples (default: all 1,797).

    Returns:
        (images, labels [N] int64)
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    picked = np.arange(len(data.images)) if indices is None else np.asarray(indices, dtype=np.int64)
    pixels = np.clip(np.round(data.images[picked] * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # [N, 8, 8]
    images = [Image.fromarray(p, mode="L").convert("RGB") for p in pixels]
    return images, data.target[picked].astype(np.int64)


def digits_split_images(split: str = "train") -> tuple[list, np.ndarray]:
    """The training package's fixed digits split ("train" or "val"; stratified 80/20, seed 0) as RGB PIL
    images (already upscaled to 32x32 there) and labels: calibrate on "train", report accuracy on "val"."""
    from PIL import Image

    from slab_edge.train.data import load_digits_split

    train, val = load_digits_split(seed=0)
    images, labels = train if split == "train" else val
    return [Image.fromarray(im, mode="L").convert("RGB") for im in images], np.asarray(labels, dtype=np.int64)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Every image file under `folder` (recursive), sorted by path."""
    from slab_edge.runtime.preprocess import IMAGE_SUFFIXES

    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"calibration folder not found: {root}")
    if not root.is_dir():
        raise InputError(f"calibration data must be a folder of images or 'digits', got the file {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return files


def calibration_images(source: str | os.PathLike, count: int) -> list:
    """Up to `count` images (PIL images or paths), evenly spread over the source."""
    if count < 1:
        raise InputError(f"calibration image count must be >= 1, got {count}")
    if str(source) == DIGITS:
        images = digits_split_images("train")[0]  # never the held-out split accuracy is reported on
        picks = np.linspace(0, len(images) - 1, num=min(count, len(images))).round().astype(int)
        return [images[i] for i in sorted(set(picks.tolist()))]
    files = image_files(source)
    picks = np.linspace(0, len(files) - 1, num=min(count, len(files))).round().astype(int)
    return [files[i] for i in sorted(set(picks.tolist()))]


def transform_from_metadata(metadata: dict[str, Any]):
    """The runtime's evaluation transform for decoded slab_edge metadata."""
    from slab_edge.runtime.preprocess import EvalTransform

    return EvalTransform.from_metadata(metadata)


def preprocess_batch(images: Sequence, metadata: dict[str, Any]) -> np.ndarray:
    """[B, C, H, W] float32 from PIL images or image paths, with the model's own preprocessing."""
    return transform_from_metadata(metadata).batch(list(images))


class ImageCalibrationReader:
    """onnxruntime.quantization CalibrationDataReader over images, preprocessed from the model metadata.

    Args:
        images: PIL images or image paths.
        metadata: decoded slab_edge metadata of the fp32 model (input_size, mean, std, ...).
        input_name: the model's image input.
        batch_size: images per calibration batch.
    """

    def __init__(self, images: Sequence, metadata: dict[str, Any], input_name: str, batch_size: int = 8):
        self.images = list(images)
        self.transform = transform_from_metadata(metadata)
        self.input_name = input_name
        self.batch_size = max(1, int(batch_size))
        self._next = 0

    def __len__(self) -> int:
        return (len(self.images) + self.batch_size - 1) // self.batch_size

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.images):
            return None
        chunk = self.images[self._next : self._next + self.batch_size]
        self._next += len(chunk)
        return {self.input_name: self.transform.batch(chunk)}

    def rewind(self) -> None:
        self._next = 0
