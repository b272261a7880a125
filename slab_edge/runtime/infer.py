"""Classify images with a loaded session: collect files, preprocess with the model's metadata, batch, top-k.

Torch-free (numpy, PIL, the session's backend). `slab-edge infer` and `runtime/infer.py` are thin wrappers.

Bad files: a file named explicitly that cannot be read is an error (InputError naming it); files found
through a folder or a glob that cannot be read are skipped, reported (`on_skip`) and counted, so one
corrupt photo does not stop a folder of thousands. `strict=True` turns those skips into errors too.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slab_edge.errors import InputError
from slab_edge.runtime.preprocess import IMAGE_SUFFIXES, EvalTransform, transform_for
from slab_edge.runtime.session import Session

GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class ImageSource:
    path: Path
    explicit: bool  #: named on the command line (errors are fatal) vs found in a folder / glob (skipped)


def collect_images(sources: Sequence[str | os.PathLike], recursive: bool = False) -> list[ImageSource]:
    """Expand files, folders and glob patterns into image files, in a stable (sorted) order.

    Folders contribute files with an image suffix (IMAGE_SUFFIXES, any case); `recursive` descends into
    sub-folders. Globs contribute every file they match (`**` works). Duplicates are dropped.

    Raises:
        InputError: a source that is neither a file, a folder nor a glob with matches; nothing found at all.
    """
    found: list[ImageSource] = []
    for source in sources:
        text = str(source)
        path = Path(text)
        if path.is_file():
            found.append(ImageSource(path, explicit=True))
        elif path.is_dir():
            pattern = "**/*" if recursive else "*"
            candidates = path.glob(pattern)
            files = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            found.extend(ImageSource(p, explicit=False) for p in files)
        elif GLOB_CHARS & set(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            files = [p for p in matches if p.is_file()]
            if not files:
                raise InputError(f"no files match {text!r}")
            found.extend(ImageSource(p, explicit=False) for p in files)
        else:
            raise InputError(f"no such image, folder or glob: {text}")
    unique: dict[Path, ImageSource] = {}
    for item in found:
        key = item.path.resolve()
        if key not in unique or item.explicit:
            unique[key] = ImageSource(unique[key].path if key in unique else item.path, item.explicit)
    if not unique:
        names = ", ".join(map(str, sources))
        raise InputError(f"no image files in {names} (suffixes: {' '.join(IMAGE_SUFFIXES)})")
    return list(unique.values())


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def to_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Logits -> probabilities; outputs that already are probabilities (non-negative, rows sum to 1) pass."""
    outputs = outputs.astype(np.float64)
    if outputs.min() >= 0 and np.allclose(outputs.sum(-1), 1.0, atol=1e-3):
        return outputs
    return softmax(outputs)


def label_names(metadata: dict[str, Any], num_classes: int) -> list[str]:
    """Class names from the model's metadata; "class_<i>" when missing or of the wrong length."""
    labels = metadata.get("labels")
    if isinstance(labels, list) and len(labels) == num_classes:
        return [str(x) for x in labels]
    return [f"class_{i}" for i in range(num_classes)]


def top_k(probabilities: np.ndarray, labels: Sequence[str], k: int) -> list[list[dict[str, Any]]]:
    """[B, K] -> per row the k best as [{"label", "index", "score"}], best first (ties: lower index)."""
    k = max(1, min(k, probabilities.shape[-1]))
    order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    return [
        [{"label": labels[i], "index": int(i), "score": float(row[i])} for i in idx]
        for row, idx in zip(probabilities, order)
    ]


@dataclass
class InferResult:
    predictions: list[dict[str, Any]] = field(default_factory=list)  #: {"path", "top_k": [...]}
    skipped: list[dict[str, str]] = field(default_factory=list)  #: {"path", "error"}
    batch_seconds: list[float] = field(default_factory=list)  #: model time per batch (session.run)
    preprocess_seconds: float = 0.0
    wall_seconds: float = 0.0
    batch_size: int = 1

    def summary(self) -> dict[str, Any]:
        """Counts and speed: end-to-end images/s (decode + preprocess + model) and model-only latency."""
        n = len(self.predictions)
        model_s = float(sum(self.batch_seconds))
        lat = np.asarray(self.batch_seconds) * 1e3
        return {
            "images": n,
            "skipped": len(self.skipped),
            "batches": len(self.batch_seconds),
            "batch_size": self.batch_size,
            "wall_s": round(self.wall_seconds, 4),
            "images_per_s": round(n / self.wall_seconds, 2) if self.wall_seconds > 0 else None,
            "model_images_per_s": round(n / model_s, 2) if model_s > 0 else None,
            "mean_batch_latency_ms": round(float(lat.mean()), 3) if lat.size else None,
            "p50_batch_latency_ms": round(float(np.median(lat)), 3) if lat.size else None,
            "mean_preprocess_ms_per_image": round(self.preprocess_seconds * 1e3 / n, 3) if n else None,
        }


def effective_batch(session: Session, requested: int | None) -> tuple[int, bool]:
    """(batch size to run, pad the last batch?) from the model's batch dimension and the request."""
    fixed = session.input.shape[0] if session.input.shape else None
    if requested is not None and requested < 1:
        raise InputError(f"batch must be >= 1, got {requested}")
    if fixed is None:
        return requested or 1, False
    if requested not in (None, fixed):
        raise InputError(
            f"{session.path.name} has a fixed batch size of {fixed} (export with a dynamic batch, or build "
            f"the engine with a wider profile, to use --batch {requested})"
        )
    return fixed, True


def classify(
    session: Session,
    sources: Sequence[ImageSource],
    top: int = 5,
    batch: int | None = None,
    transform: EvalTransform | None = None,
    strict: bool = False,
    on_skip: Callable[[Path, str], None] | None = None,
    output_name: str | None = None,
) -> InferResult:
    """Run `session` over the images in `sources`, `batch` at a time, keeping the top-`top` classes.

    Args:
        session: a loaded classification model (one input [B, C, H, W]).
        sources: from `collect_images`.
        transform: preprocessing; default `transform_for(session)` (the model's own metadata).
        strict: fail on a bad file found through a folder/glob instead of skipping it.
        on_skip: called with (path, reason) for every skipped file.
        output_name: which output holds the logits (default: the first).

    Raises:
        InputError: an explicitly named bad file (or any bad file with `strict`); no readable image at all.
    """
    transform = transform or transform_for(session)
    size, pad = effective_batch(session, batch)
    dtype = session.input.dtype
    name = output_name or session.outputs[0].name
    result = InferResult(batch_size=size)
    start = time.perf_counter()
    pending: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        arrays = np.stack([a for _, a in pending]).astype(dtype, copy=False)
        if pad and len(pending) < size:
            filler = np.zeros((size - len(pending), *arrays.shape[1:]), dtype)
            arrays = np.concatenate([arrays, filler])
        t0 = time.perf_counter()
        outputs = session.run(arrays)[name]
        result.batch_seconds.append(time.perf_counter() - t0)
        probabilities = to_probabilities(outputs[: len(pending)].reshape(len(pending), -1))
        labels = label_names(session.metadata, probabilities.shape[-1])
        for (path, _), best in zip(pending, top_k(probabilities, labels, top)):
            result.predictions.append({"path": str(path), "top_k": best})
        pending.clear()

    for source in sources:
        t0 = time.perf_counter()
        try:
            array = transform(source.path)
        except InputError as err:
            if source.explicit or strict:
                raise
            result.skipped.append({"path": str(source.path), "error": str(err)})
            if on_skip:
                on_skip(source.path, str(err))
            continue
        finally:
            result.preprocess_seconds += time.perf_counter() - t0
        pending.append((source.path, array))
        if len(pending) == size:
            flush()
    if pending:
        flush()
    result.wall_seconds = time.perf_counter() - start
    if not result.predictions:
        raise InputError(f"no image could be read ({len(result.skipped)} skipped)")
    return result


def format_prediction(prediction: dict[str, Any]) -> str:
    best = ", ".join(f"{p['label']} {p['score']:.3f}" for p in prediction["top_k"])
    return f"{prediction['path']}: {best}"


def format_summary(summary: dict[str, Any]) -> str:
    parts = [f"{summary['images']} images"]
    if summary["skipped"]:
        parts.append(f"{summary['skipped']} skipped")
    parts.append(f"batch {summary['batch_size']}")
    if summary["images_per_s"] is not None:
        parts.append(f"{summary['images_per_s']:.1f} images/s end to end")
    if summary["model_images_per_s"] is not None:
        parts.append(f"{summary['model_images_per_s']:.1f} images/s model only")
    if summary["mean_batch_latency_ms"] is not None:
        parts.append(
            f"model latency mean {summary['mean_batch_latency_ms']:.2f} ms / p50 "
            f"{summary['p50_batch_latency_ms']:.2f} ms per batch"
        )
    return ", ".join(parts)
