"""Cross-backend comparison: PyTorch / ONNX Runtime / TensorRT outputs on the same inputs.

Every backend is a `Runner` (name, `run(batch) -> [B, K]`); the first is the reference. For each other
backend the report gives the max absolute and relative error of the first output, top-1 agreement, and
pass/fail: pass when every element satisfies |x - ref| <= atol + rtol * |ref| (numpy.allclose) and, if
`min_top1` is set, top-1 agreement >= min_top1.

Tolerances not given are chosen per compared pair from the two models' precisions (`default_tolerance`):
the coarser precision of the two sets atol as a fraction of max |reference| (fp32 1e-4, fp16 / TF32 1e-2,
int8 QDQ 0.5 plus top-1 agreement >= 0.8). A model's precision comes from its metadata
(`model_precision`): a TensorRT engine's sidecar, else the ONNX `slab_edge.precision` key, else its input
dtype, else fp32.

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

#: how coarse a precision is; the coarser model of a compared pair sets the default tolerance
PRECISION_RANK = {"fp32": 0, "tf32": 1, "fp16": 2, "int8": 3}


@dataclass(frozen=True)
class DefaultTolerance:
    """A default for one precision: atol = `scale` * max |reference| (rtol 0), and a top-1 floor."""

    scale: float
    min_top1: float | None
    why: str


#: precision -> default tolerance. fp32 and fp16 are the export's own parity bounds (slab_edge.export:
#: fp32 <= 1e-4, fp16 <= 1e-2 * max|logit|). int8 QDQ error is set by the calibration data, not by the
#: runtime: on the demo's digits model (`make demo`) fp32 vs int8 differ by 0.14-0.25 x max|ref| with 87-100 %
#: top-1 agreement on random inputs (8 and 64, seeds 0-2) and by 0.066 x with 99.4 % on its 359 held-out
#: images; an int8 export of other (random) weights differs by 1.0 x with 0-10 % agreement. Hence a loose
#: bound and a top-1 floor.
DEFAULT_TOLERANCES: dict[str, DefaultTolerance] = {
    "fp32": DefaultTolerance(1e-4, None, "fp32 on both sides: only the summation order differs"),
    "tf32": DefaultTolerance(1e-2, None, "TF32 matmuls (10-bit mantissa, as in fp16)"),
    "fp16": DefaultTolerance(1e-2, None, "fp16 weights and activations"),
    "int8": DefaultTolerance(0.5, 0.8, "int8 QDQ: error set by the calibration data"),
}


@dataclass(frozen=True)
class Tolerance:
    """What one comparison is held to: pass iff |x - ref| <= atol + rtol * |ref| everywhere and top-1
    agreement >= min_top1 (when set). `reason` says where the numbers came from."""

    atol: float
    rtol: float
    min_top1: float | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"atol": self.atol, "rtol": self.rtol, "min_top1": self.min_top1, "reason": self.reason}


def default_tolerance(reference_precision: str, precision: str, max_abs_reference: float) -> Tolerance:
    """The default tolerance for comparing a `precision` model against a `reference_precision` one.

    Args:
        reference_precision, precision: fp32 | tf32 | fp16 | int8 (others count as fp32).
        max_abs_reference: max |reference output|; atol is a fraction of it (logits have no fixed scale).
    """
    ranked = [p if p in PRECISION_RANK else "fp32" for p in (reference_precision, precision)]
    coarse = max(ranked, key=PRECISION_RANK.__getitem__)
    rule = DEFAULT_TOLERANCES[coarse]
    atol = rule.scale * max_abs_reference
    gate = f", top-1 >= {rule.min_top1:g}" if rule.min_top1 is not None else ""
    reason = (
        f"default for {reference_precision} vs {precision}: {rule.scale:g} x max|ref| "
        f"({max_abs_reference:.3g}){gate}; {rule.why}"
    )
    return Tolerance(atol, 0.0, rule.min_top1, reason)


def resolve_tolerance(
    atol: float | None,
    rtol: float | None,
    min_top1: float | None,
    reference_precision: str,
    precision: str,
    max_abs_reference: float,
) -> Tolerance:
    """Explicit tolerances win (an unset one of atol / rtol is 0; --min-top1 alone keeps the default atol);
    otherwise `default_tolerance` for the pair."""
    if atol is None and rtol is None:
        default = default_tolerance(reference_precision, precision, max_abs_reference)
        if min_top1 is None:
            return default
        return Tolerance(default.atol, 0.0, min_top1, f"{default.reason}; top-1 >= {min_top1:g} given")
    gate = f", top-1 >= {min_top1:g}" if min_top1 is not None else ""
    atol, rtol = atol or 0.0, rtol or 0.0
    return Tolerance(atol, rtol, min_top1, f"given: atol {atol:g}, rtol {rtol:g}{gate}")


def model_precision(session: Session) -> tuple[str, str]:
    """(precision, where it was read) of a loaded model: fp32 | tf32 | fp16 | int8.

    A TensorRT engine's sidecar records what it computes in ("strongly-typed": the ONNX's precision);
    ONNX files carry `slab_edge.precision`; without either, an fp16 input means fp16 and anything else is
    taken for fp32. fp32 counts as TF32 on TensorRT and on ONNX Runtime's CUDA EP (both allow TF32
    matmuls for fp32 unless told otherwise).
    """
    sidecar = getattr(session, "sidecar", None)
    recorded = getattr(sidecar, "precision", None)
    declared = session.metadata.get("precision")
    if recorded in PRECISION_RANK:
        precision, source = recorded, "engine sidecar"
    elif declared in PRECISION_RANK:
        precision, source = declared, "metadata"
    elif declared:
        precision, source = "fp32", f"metadata precision {declared!r} not known: taken for fp32"
    elif session.inputs and np.dtype(session.input.dtype) == np.float16:
        precision, source = "fp16", "no precision metadata; fp16 input"
    else:
        precision, source = "fp32", "no precision metadata: taken for fp32"
    if precision == "fp32" and sidecar is not None:
        return "tf32", f"{source}: fp32, and TensorRT allows TF32 for fp32 layers by default"
    if precision == "fp32" and _cuda_tf32(session):
        return "tf32", f"{source}: fp32, and ONNX Runtime CUDA runs it in TF32 (use_tf32=1, its default)"
    return precision, source


def _cuda_tf32(session: Session) -> bool:
    """ONNX Runtime on CUDA runs fp32 GEMMs in TF32 unless provider option use_tf32=0."""
    providers = getattr(session, "providers", None) or []
    if not providers or providers[0] != "CUDAExecutionProvider":
        return False
    options = (getattr(session, "provider_options", None) or {}).get("CUDAExecutionProvider", {})
    return str(options.get("use_tf32", "1")) != "0"


@dataclass
class Runner:
    """A named backend: `run(batch [B, C, H, W] float32) -> outputs [B, ...]` (first output only).

    `precision` (fp32 | tf32 | fp16 | int8) and `precision_source` pick the default tolerances.
    """

    name: str
    run: Callable[[np.ndarray], np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int | None, ...] | None = None
    close: Callable[[], None] = lambda: None
    precision: str = "fp32"
    precision_source: str = "assumed"


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
    precision, source = model_precision(session)
    return Runner(label, run, dict(session.metadata), spec.shape, session.close, precision, source)


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
    label = name or f"torch:{prepared.name} ({form})"
    return Runner(label, run, metadata, (None, *size), precision="fp32", precision_source="PyTorch float32")


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
    atol: float | None = None,
    rtol: float | None = None,
    min_top1: float | None = None,
) -> dict[str, Any]:
    """Run every runner on `inputs`; compare each against the first.

    Args:
        atol, rtol, min_top1: explicit tolerances (`resolve_tolerance`); atol and rtol both None: defaults
            from the precisions of each compared pair (`default_tolerance`).

    Returns:
        {"reference", "reference_precision", "inputs": {"shape"}, "tolerances" (as given),
        "results": [{"backend", "precision", ...compare_arrays, "tolerance", "passed"}], "passed"}
    """
    if len(runners) < 2:
        raise InputError("compare needs at least two backends (the first is the reference)")
    head = runners[0]
    reference = head.run(inputs)
    scale = float(np.abs(reference.astype(np.float64)).max()) if reference.size else 0.0
    results = []
    for runner in runners[1:]:
        tol = resolve_tolerance(atol, rtol, min_top1, head.precision, runner.precision, scale)
        stats = compare_arrays(reference, runner.run(inputs), tol.atol, tol.rtol)
        passed = stats["allclose"] and (tol.min_top1 is None or stats["top1_agreement"] >= tol.min_top1)
        results.append(
            {
                "backend": runner.name,
                "precision": runner.precision,
                "precision_source": runner.precision_source,
                **stats,
                "tolerance": tol.to_json(),
                "passed": bool(passed),
            }
        )
    return {
        "reference": head.name,
        "reference_precision": head.precision,
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
    lines = [
        f"reference: {report['reference']} ({report.get('reference_precision', '?')})  "
        f"inputs {'x'.join(map(str, report['inputs']['shape']))}"
    ]
    for r in report["results"]:
        tol = r["tolerance"]
        gate = f", top-1 >= {tol['min_top1']:g}" if tol["min_top1"] is not None else ""
        lines.append(
            f"  {r['backend']} ({r['precision']}): max|diff| {r['max_abs']:.3e} "
            f"(max|ref| {r['max_abs_reference']:.3g}), max rel {r['max_rel']:.3e}, "
            f"top-1 agree {r['top1_agreement']:.1%}: " + ("PASS" if r["passed"] else "FAIL")
        )
        lines.append(f"    tolerance atol {tol['atol']:.3g}, rtol {tol['rtol']:g}{gate} ({tol['reason']})")
        if r["precision_source"] not in ("metadata", "engine sidecar", "PyTorch float32"):
            lines.append(f"    precision {r['precision']}: {r['precision_source']}")
    lines.append("PASS" if report["passed"] else "FAIL")
    return "\n".join(lines)
