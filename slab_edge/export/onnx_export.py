"""PyTorch -> ONNX: export, clean up, label with metadata, check, compare with PyTorch, write atomically.

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript) by default. On torch 2.14 both
exporters give the same graph after onnxslim, but the dynamo exporter's raw graph is already clean (SLA as
MatMul/Relu/ReduceSum/Div, 87 nodes for a 2-block test model vs 267 with Shape/Gather/Concat/Cast chains
from the TorchScript exporter), records each node's module scope (used to name nodes
`blocks.3.attn/sla_core/node_div`), and is the exporter torch maintains (the TorchScript one is deprecated).
`exporter="torchscript"` keeps the legacy path available as a fallback for models torch.export rejects.

Every file passes `onnx.checker.check_model(full_check=True)` and, unless disabled, an ONNX Runtime vs
PyTorch parity check before it is renamed into place: a file that fails is never written.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slab_edge.errors import BackendError, InputError, SlabEdgeError
from slab_edge.export.checkpoint import PreparedModel
from slab_edge.export.graph import (
    drop_untyped_value_info,
    op_type_counts,
    reorder_erf_gelu,
    scope_node_names,
    sla_core_node_names,
    tag_sla_cores,
)
from slab_edge.io import atomic_path

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
EXPORTERS = ("dynamo", "torchscript")
PRECISIONS = ("fp32", "fp16", "int8")
#: ORT vs PyTorch, fp32, absolute
FP32_TOLERANCE = 1e-4
#: fp16-mixed vs PyTorch fp32: max |diff| <= FP16_RELATIVE_TOLERANCE * max |logit|
FP16_RELATIVE_TOLERANCE = 1e-2
#: ops a folded export must not contain (unless the model declares the norm unfoldable)
NORM_OPS = ("BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization")


@dataclass
class ParityStats:
    """ONNX Runtime output vs PyTorch fp32 on one input set."""

    inputs: str  #: "random" | "digits"
    batch: int
    max_abs: float
    max_abs_logit: float
    top1_agree: float  #: fraction of samples with the same arg-max
    top1_checked: int  #: samples whose top-1/top-2 margin exceeds the tolerance (must agree)
    top1_disagree_checked: int
    tolerance: float
    passed: bool

    def line(self) -> str:
        verdict = "ok" if self.passed else "FAIL"
        return (
            f"{self.inputs:>6} x{self.batch}: max|diff| {self.max_abs:.2e} "
            f"(max|logit| {self.max_abs_logit:.3g}, tol {self.tolerance:.1e}), "
            f"top-1 agree {self.top1_agree:.0%}: {verdict}"
        )


@dataclass
class ExportReport:
    path: Path
    precision: str
    metadata: dict[str, Any]
    op_counts: dict[str, int]
    sla_core_nodes: int
    parity: list[ParityStats] = field(default_factory=list)
    seconds: float = 0.0

    def parity_max_abs(self) -> float:
        return max((p.max_abs for p in self.parity), default=float("nan"))


# -- torch -> raw ONNX ----------------------------------------------------------------------------------
def torch_to_onnx(
    model,
    input_size: tuple[int, int, int] | list[int],
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    exporter: str = "dynamo",
    example_batch: int = 2,
):
    """Trace `model` (eval mode) into an onnx.ModelProto with input `input` [B, C, H, W], output `logits`.

    Raises:
        BackendError: the exporter rejects the model (message names the exporter and the first error line).
    """
    import torch

    if exporter not in EXPORTERS:
        raise InputError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if opset < 17:
        raise InputError(f"opset {opset} is too old: slab-edge exports need opset >= 17")
    example = torch.randn(example_batch, *input_size, generator=torch.Generator().manual_seed(0))
    kwargs: dict[str, Any] = dict(
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset, dynamo=exporter == "dynamo"
    )
    if exporter == "dynamo":
        kwargs["verbose"] = False
        if dynamic_batch:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    elif dynamic_batch:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    model = model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer / deprecation chatter; the checks below are the judge
            if exporter == "dynamo":
                program = torch.onnx.export(model, (example,), **kwargs)
                return program.model_proto
            import io

            import onnx

            buffer = io.BytesIO()
            torch.onnx.export(model, (example,), buffer, **kwargs)
            return onnx.load_from_string(buffer.getvalue())
    except SlabEdgeError:
        raise
    except Exception as err:  # exporter errors are long multi-line reports: keep the gist
        text = str(err).strip().splitlines()
        first = next((ln for ln in text if ln.strip()), type(err).__name__)
        hint = " (try --exporter torchscript)" if exporter == "dynamo" else ""
        raise BackendError(
            f"torch.onnx ({exporter}) could not export the model: {first[:300]}{hint}"
        ) from err


def finalize_graph(proto, simplify: bool = True):
    """Scope node names, simplify with onnxslim, put exact GELU in its fusable form, tag SLA-core nodes.

    Returns the new ModelProto.
    """
    scope_node_names(proto)
    if simplify:
        import onnxslim

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proto = onnxslim.slim(proto)
        drop_untyped_value_info(proto)
    reorder_erf_gelu(proto)
    tag_sla_cores(proto)
    return proto


def set_metadata(proto, values: dict[str, Any]) -> None:
    """Replace the slab_edge.* metadata_props of `proto` by `values` (encoded with the runtime contract)."""
    from slab_edge.runtime.metadata import PREFIX, encode_metadata

    encoded = encode_metadata(values)
    keep = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith(PREFIX)]
    del proto.metadata_props[:]
    for key, value in [*keep, *encoded.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def check_onnx(proto) -> None:
    """onnx.checker full check (types and shapes inferred strictly). Raises BackendError."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BackendError(f"exported ONNX fails onnx.checker: {first}") from None


def export_metadata(prepared: PreparedModel, precision: str, dynamic_batch: bool) -> dict[str, Any]:
    from slab_edge import __version__

    cfg = prepared.data_config
    return {
        "task": "classification",
        "model": prepared.name,
        "version": __version__,
        "folded": bool(prepared.folded),
        "precision": precision,
        "input_name": INPUT_NAME,
        "input_size": list(cfg["input_size"]),
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "interpolation": cfg["interpolation"],
        "crop_pct": cfg["crop_pct"],
        "labels": list(prepared.labels),
        "dynamic_batch": bool(dynamic_batch),
    }


# -- parity -----------------------------------------------------------------------------------------------
def parity_inputs(metadata: dict[str, Any], batch: int = 2, real: bool = True) -> dict[str, np.ndarray]:
    """{"random": N(0,1) [B, C, H, W], "digits": B real digit images preprocessed from `metadata`}."""
    shape = (batch, *metadata["input_size"])
    out = {"random": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    if real:
        from slab_edge.export.calibration import digits_images, preprocess_batch

        images, _ = digits_images(list(range(batch)))
        out["digits"] = preprocess_batch(images, metadata)
    return out


def ort_session(model: Any, threads: int | None = None):
    """onnxruntime CPU session from a ModelProto, bytes or path."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif isinstance(model, (str, os.PathLike)):
        model = str(model)
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own Fail/InvalidGraph types
        raise BackendError(
            f"ONNX Runtime cannot load the model: {str(err).strip().splitlines()[0]}"
        ) from None


def torch_logits(model, batch: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(batch)).float().numpy()


def compare_logits(
    reference: np.ndarray, candidate: np.ndarray, tolerance: float, name: str, relative: bool = False
) -> ParityStats:
    """Parity of `candidate` against `reference` [B, K].

    The tolerance is absolute, or (relative=True) a fraction of max |reference|. Top-1 must agree on every
    sample whose reference top-1/top-2 margin exceeds twice the tolerance (closer calls may flip).
    """
    candidate = candidate.astype(np.float32)
    diff = float(np.max(np.abs(reference - candidate))) if reference.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    tol = tolerance * scale if relative else tolerance
    ref_top = reference.argmax(-1)
    agree = ref_top == candidate.argmax(-1)
    sorted_ref = np.sort(reference, axis=-1)
    margin = (
        sorted_ref[:, -1] - sorted_ref[:, -2] if reference.shape[-1] > 1 else np.full(len(reference), np.inf)
    )
    decisive = margin > 2 * tol
    bad = int(np.sum(decisive & ~agree))
    passed = bool(np.isfinite(candidate).all() and diff <= tol and bad == 0)
    return ParityStats(
        inputs=name,
        batch=int(reference.shape[0]),
        max_abs=diff,
        max_abs_logit=scale,
        top1_agree=float(agree.mean()) if agree.size else 1.0,
        top1_checked=int(decisive.sum()),
        top1_disagree_checked=bad,
        tolerance=tol,
        passed=passed,
    )


def check_parity(
    torch_model, proto_or_path, inputs: dict[str, np.ndarray], precision: str, tolerance: float | None = None
) -> list[ParityStats]:
    """ONNX Runtime vs PyTorch fp32 on each input set.

    Tolerances: fp32 absolute (default 1e-4); fp16 relative to max |logit| (default 1e-2); int8 is
    reported only (tolerance = inf): its error depends on the calibration data, not on the export.
    """
    session = ort_session(proto_or_path)
    stats = []
    for name, batch in inputs.items():
        reference = torch_logits(torch_model, batch)
        got = session.run(None, {session.get_inputs()[0].name: batch})[0]
        if precision == "fp32":
            stats.append(compare_logits(reference, got, tolerance or FP32_TOLERANCE, name))
        elif precision == "fp16":
            stats.append(
                compare_logits(reference, got, tolerance or FP16_RELATIVE_TOLERANCE, name, relative=True)
            )
        else:
            stats.append(compare_logits(reference, got, float("inf"), name))
    return stats


# -- the whole export -------------------------------------------------------------------------------------
def variant_path(output: str | os.PathLike, precision: str, single: bool) -> Path:
    """Where a precision variant goes: `output` itself when only one is written, else `<stem>.<prec>.onnx`
    for fp16/int8 (fp32 keeps `output`)."""
    output = Path(output)
    if single or precision == "fp32":
        return output
    stem = output.name[: -len(".onnx")] if output.name.endswith(".onnx") else output.name
    return output.with_name(f"{stem}.{precision}.onnx")


def save_onnx(proto, path: str | os.PathLike, verify=None) -> Path:
    """Write `proto` atomically; `verify(tmp_path)` runs on the written temp file before the rename."""
    import onnx

    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
        if verify is not None:
            verify(tmp)
    return Path(path)


def export_model(
    prepared: PreparedModel,
    output: str | os.PathLike,
    precisions: tuple[str, ...] | list[str] = ("fp32",),
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    exporter: str = "dynamo",
    simplify: bool = True,
    parity: bool = True,
    parity_batch: int = 2,
    tolerance: float | None = None,
    calibration: str | os.PathLike | None = None,
    calibration_count: int = 64,
    int8_per_channel: bool = True,
    log=None,
) -> list[ExportReport]:
    """Export `prepared` to ONNX in each requested precision; returns one report per file written.

    Args:
        prepared: from `prepare_model` (eval mode, folded).
        output: the .onnx path (fp32 or the only precision); other precisions get `<stem>.<prec>.onnx`.
        precisions: any of "fp32", "fp16" (mixed: SLA core in fp32), "int8" (QDQ, needs `calibration`).
        calibration: image folder or "digits", for int8.
        tolerance: override the fp32 (absolute) / fp16 (relative) parity tolerance.
        log: callable(str) for progress lines (None: silent).

    Raises:
        InputError / BackendError: bad arguments, exporter or checker failures, a parity failure (the
        failing file is not written).
    """
    from slab_edge.export.precision import convert_fp16, quantize_int8

    precisions = list(dict.fromkeys(precisions))
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise InputError(f"unknown precision {unknown or precisions}; choose from {', '.join(PRECISIONS)}")
    if "int8" in precisions and calibration is None:
        raise InputError("int8 export needs calibration images: --calib-data FOLDER (or 'digits')")
    output = Path(output)
    if output.suffix != ".onnx":
        raise InputError(f"output must end in .onnx, got {output}")
    say = log or (lambda _msg: None)

    start = time.perf_counter()
    raw = torch_to_onnx(prepared.model, prepared.data_config["input_size"], opset, dynamic_batch, exporter)
    fp32 = finalize_graph(raw, simplify=simplify)
    meta = export_metadata(prepared, "fp32", dynamic_batch)
    set_metadata(fp32, meta)
    check_onnx(fp32)
    say(f"exported {prepared.name} ({prepared.source}) with torch.onnx {exporter}, opset {opset} "
        f"in {time.perf_counter() - start:.1f} s")  # fmt: skip
    inputs = parity_inputs(meta, batch=parity_batch) if parity else {}

    reports: list[ExportReport] = []
    single = len(precisions) == 1
    for precision in precisions:
        t0 = time.perf_counter()
        if precision == "fp32":
            proto = fp32
        elif precision == "fp16":
            proto = convert_fp16(fp32)
        else:
            proto = quantize_int8(fp32, calibration, calibration_count, per_channel=int8_per_channel, log=say)
        if precision != "fp32":
            set_metadata(proto, {**meta, "precision": precision})
            check_onnx(proto)
        path = variant_path(output, precision, single)
        stats: list[ParityStats] = []

        def verify(tmp: Path, precision=precision, stats=stats) -> None:
            if not parity:
                return
            stats.extend(check_parity(prepared.model, tmp, inputs, precision, tolerance))
            failed = [s for s in stats if not s.passed]
            if failed:
                raise SlabEdgeError(
                    f"{precision} ONNX does not match PyTorch, not written: {failed[0].line().strip()}"
                )

        save_onnx(proto, path, verify)
        report = ExportReport(
            path=path,
            precision=precision,
            metadata={**meta, "precision": precision},
            op_counts=dict(op_type_counts(proto)),
            sla_core_nodes=len(sla_core_node_names(proto)),
            parity=stats,
            seconds=time.perf_counter() - t0,
        )
        reports.append(report)
        nodes = sum(report.op_counts.values())
        say(f"wrote {path} ({precision}, {path.stat().st_size / 1e6:.2f} MB, {nodes} nodes)")
        for s in stats:
            say(f"  parity ORT vs PyTorch {s.line()}")
    return reports
