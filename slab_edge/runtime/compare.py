"""Cross-backend comparison: PyTorch / ONNX Runtime / TensorRT outputs on the same inputs.

Every backend is a `Runner` (name, `run(batch) -> [B, K]`); the first is the reference. For each other
backend the report gives the max absolute and relative error of the first output, top-1 agreement, and
pass/fail: pass when every element satisfies |x - ref| <= atol + rtol * |ref| (numpy.allclose) and, if
`min_top1` is set, top-1 agreement >= min_top1.

torch is imported only by `torch_runner` (the torch backend): comparing ONNX Runtime with TensorRT on a
device works without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slab_edge.errors import BackendError, InputError
from slab_edge.runtime.infer import effective_batch
from slab_edge.runtime.loader import load
from slab_edge.runtime.session import Session

#: relative errors are measured against max(|ref|, REL_FLOOR) so near-zero reference values do not explode
REL_FLOOR = 1e-6


@dataclass
class Runner:
    """A named backend: `run(batch [B, C, H, W] float32) -> outputs [B, ...]` (first output only)."""

    name: str
    run: Callable[[np.ndarray], np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int | None, ...] | None = None
    close: Callable[[], None] = lambda: None


def session_runner(session: Session, name: str | None = None, batch: int | None = None) -> Runner:
    """Wrap a loaded session; inputs are cast to its input dtype (fp16 engines) and split into its batch
    size (fixed-batch models get the last chunk zero-padded)."""
    size, pad = effective_batch(session, batch)
    spec, output = session.input, session.outputs[0].name

    def run(inputs: np.ndarray) -> np.ndarray:
        chunks = []
        for start in range(0, len(inputs), size):
            chunk = inputs[start : start + size].astype(spec.dtype, copy=False)
            n = len(chunk)
            if pad and n < size:
                chunk = np.concatenate([chunk, np.zeros((size - n, *chunk.shape[1:]), spec.dtype)])
            chunks.append(np.asarray(session.run(chunk)[output])[:n])
        return np.concatenate(chunks)

    label = name or f"{session.backend}:{session.path.name}"
    return Runner(label, run, dict(session.metadata), spec.shape, session.close)


def torch_runner(
    model_name: str | None,
    checkpoint: str | os.PathLike | None = None,
    reparameterize: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    name: str | None = None,
    batch: int = 8,
) -> Runner:
    """The PyTorch reference: a registered model (or any timm model) + checkpoint, folded if asked.

    Args:
        model_name: slab-edge / timm model name (None: the checkpoint's own metadata names it).
        checkpoint: training or deploy checkpoint (slab_edge.export.checkpoint formats); None = random init.
        reparameterize: fold the norms first (the deploy graph) instead of running the training graph.
        model_kwargs: extra constructor arguments (reduced sizes, img_size).
        batch: forward this many inputs at a time.
    """
    try:
        import torch  # the only torch import under slab_edge.runtime: the torch backend needs it
    except ImportError as err:
        raise BackendError(
            f"the torch backend of compare needs PyTorch ({err}): pip install 'slab-edge[export]'"
        ) from None

    from slab_edge.export.checkpoint import prepare_model

    prepared = prepare_model(model_name, checkpoint, model_kwargs, fold=reparameterize)
    model = prepared.model.eval()

    def run(inputs: np.ndarray) -> np.ndarray:
        outs = []
        with torch.inference_mode():
            for start in range(0, len(inputs), batch):
                chunk = torch.from_numpy(np.ascontiguousarray(inputs[start : start + batch], np.float32))
                out = model(chunk)
                outs.append((out[0] if isinstance(out, (tuple, list)) else out).float().numpy())
        return np.concatenate(outs)

    form = "folded" if reparameterize else "as trained"
    metadata = {**prepared.data_config, "labels": prepared.labels, "model": prepared.name}
    size = tuple(prepared.data_config["input_size"])
    return Runner(name or f"torch:{prepared.name} ({form})", run, metadata, (None, *size))


def compare_arrays(reference: np.ndarray, other: np.ndarray, atol: float, rtol: float) -> dict[str, Any]:
    """Errors of `other` against `reference` ([B, ...], same shape), top-1 agreement and allclose."""
    if reference.shape != other.shape:
        raise InputError(f"output shapes differ: {list(reference.shape)} vs {list(other.shape)}")
    ref = reference.astype(np.float64)
    got = other.astype(np.float64)
    diff = np.abs(got - ref)
    finite = bool(np.isfinite(got).all())
    rel = diff / np.maximum(np.abs(ref), REL_FLOOR)
    flat_ref, flat_got = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    agree = float(np.mean(flat_ref.argmax(-1) == flat_got.argmax(-1))) if len(ref) else float("nan")
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
    return {
        "max_abs": float(diff.max()) if diff.size else 0.0,
        "mean_abs": float(diff.mean()) if diff.size else 0.0,
        "max_rel": float(rel.max()) if rel.size else 0.0,
        "max_abs_reference": float(np.abs(ref).max()) if ref.size else 0.0,
        "worst_index": [int(i) for i in worst],
        "top1_agreement": agree,
        "finite": finite,
        "allclose": finite and bool(np.all(diff <= atol + rtol * np.abs(ref))),
    }


def compare_runners(
    runners: Sequence[Runner],
    inputs: np.ndarray,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    min_top1: float | None = None,
) -> dict[str, Any]:
    """Run every runner on `inputs`; compare each against the first.

    Returns:
        {"reference", "inputs": {"shape"}, "tolerances", "results": [{"backend", ...compare_arrays,
        "passed"}], "passed"}
    """
    if len(runners) < 2:
        raise InputError("compare needs at least two backends (the first is the reference)")
    reference = runners[0].run(inputs)
    results = []
    for runner in runners[1:]:
        stats = compare_arrays(reference, runner.run(inputs), atol, rtol)
        passed = stats["allclose"] and (min_top1 is None or stats["top1_agreement"] >= min_top1)
        results.append({"backend": runner.name, **stats, "passed": bool(passed)})
    return {
        "reference": runners[0].name,
        "inputs": {"shape": list(inputs.shape)},
        "tolerances": {"atol": atol, "rtol": rtol, "min_top1": min_top1},
        "results": results,
        "passed": all(r["passed"] for r in results),
    }


def random_batch(shape: Sequence[int | None], n: int, seed: int = 0) -> np.ndarray:
    """n seeded standard-normal inputs of [C, H, W] = shape[1:] (roughly what normalized images look like)."""
    dims = list(shape[1:])
    if any(d is None for d in dims):
        raise InputError(
            f"input shape {list(shape)} has dynamic dimensions; no metadata input_size to fill them"
        )
    return np.random.default_rng(seed).standard_normal((n, *dims)).astype(np.float32)


def load_runner(
    path: str | os.PathLike, options: dict[str, Any] | None = None, batch: int | None = None
) -> Runner:
    return session_runner(load(path, **(options or {})), batch=batch)


def format_comparison(report: dict[str, Any]) -> str:
    tol = report["tolerances"]
    lines = [
        f"reference: {report['reference']}  inputs {'x'.join(map(str, report['inputs']['shape']))}  "
        f"(atol {tol['atol']:g}, rtol {tol['rtol']:g}"
        + (f", top-1 >= {tol['min_top1']:g}" if tol["min_top1"] is not None else "")
        + ")"
    ]
    for r in report["results"]:
        lines.append(
            f"  {r['backend']}: max|diff| {r['max_abs']:.3e} (max|ref| {r['max_abs_reference']:.3g}), "
            f"max rel {r['max_rel']:.3e}, top-1 agree {r['top1_agreement']:.1%}: "
            + ("PASS" if r["passed"] else "FAIL")
        )
    lines.append("PASS" if report["passed"] else "FAIL")
    return "\n".join(lines)
