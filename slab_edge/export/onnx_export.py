"""PyTorch -> ONNX: export, clean up, label with metadata, check, compare with PyTorch, write atomically.

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript) by default. On torch 2.14 both
exporters give the same graph after onnxslim, but the dynamo exporter's raw graph is already clean (SLA as
MatMul/Relu/ReduceSum/Div, 87 nodes for a 2-block test model vs 267 with Shape/Gather/Concat/Cast chains
from the TorchScript exporter), records each node's module scope (used to name nodes
`blocks.3.attn/sla_core/node_div`), and is the exporter torch maintains (the TorchScript one is deprecated).
`exporter="torchscript"` keeps the legacy path available as a fallback for models torch.export rejects.

Every file passes `onnx.checker.check_model(full_check=True)` and, unless disabled, an ONNX Runtime vs
PyTorch parity check before it is renamed into place: a file that fails is never written.

`custom_ops="ort" | "trt"` writes every SLA core as one fused node (slab_edge.export.custom_ops): the ORT
file carries a function body as well, the TRT file has the node alone.
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
from slab_edge.export.custom_ops import CUSTOM_OPS
from slab_edge.export.graph import (
    copy_model,
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
    custom_ops: str = "none"  #: CUSTOM_OPS variant
    custom_op_nodes: int = 0  #: fused SlabLinearAttention nodes
    parity_note: str = ""  #: what the parity check ran (custom-op library, function body, or not run)

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
    custom_ops: str = "none",
):
    """Trace `model` (eval mode) into an onnx.ModelProto with input `input` [B, C, H, W], output `logits`.

    custom_ops "ort" / "trt": every SLA core becomes one SlabLinearAttention node (no function body yet).

    Raises:
        BackendError: the exporter rejects the model (message names the exporter and the first error line).
    """
    import torch

    if exporter not in EXPORTERS:
        raise InputError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if opset < 17:
        raise InputError(f"opset {opset} is too old: slab-edge exports need opset >= 17")
    if custom_ops not in CUSTOM_OPS:
        raise InputError(f"unknown custom-op variant {custom_ops!r}; choose one of {', '.join(CUSTOM_OPS)}")
    fuse = custom_ops != "none"
    if fuse and exporter != "dynamo":
        raise InputError(f"--custom-ops {custom_ops} needs the dynamo exporter (not {exporter})")
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
    if fuse:
        from slab_edge.export.custom_ops import translation_table

        kwargs["custom_translation_table"] = translation_table()
    model = model.eval()
    from slab_edge.ops.sla_fused import fused_sla

    try:
        with torch.no_grad(), warnings.catch_warnings(), fused_sla("always" if fuse else "never"):
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


def export_metadata(
    prepared: PreparedModel, precision: str, dynamic_batch: bool, custom_ops: str = "none"
) -> dict[str, Any]:
    from slab_edge import __version__

    cfg = prepared.data_config
    provenance = {"weights": prepared.weights, "weights_sha256": prepared.weights_sha256}
    folding = {"folded_norms": prepared.folded_norms, "unfolded_norms": dict(prepared.unfolded_norms)}
    return {
        "task": "classification",
        "model": prepared.name,
        "version": __version__,
        "folded": bool(prepared.folded),
        **{k: v for k, v in {**folding, **provenance}.items() if v is not None},
        "precision": precision,
        "input_name": INPUT_NAME,
        "input_size": list(cfg["input_size"]),
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "interpolation": cfg["interpolation"],
        "crop_pct": cfg["crop_pct"],
        "labels": list(prepared.labels),
        "dynamic_batch": bool(dynamic_batch),
        "custom_ops": custom_ops,
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


def ort_session(
    model: Any,
    threads: int | None = None,
    custom_op_library: str | os.PathLike | None = None,
    profile_prefix: str | os.PathLike | None = None,
):
    """onnxruntime CPU session from a ModelProto, bytes or path (with the slab custom-op library if given;
    profiling to `<profile_prefix>_<date>.json` if given: `session.end_profiling()` returns the file)."""
    import onnxruntime as ort

    from slab_edge.runtime.custom_ops import register_library

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if custom_op_library is not None:
        register_library(options, custom_op_library)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
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
    torch_model,
    proto_or_path,
    inputs: dict[str, np.ndarray],
    precision: str,
    tolerance: float | None = None,
    custom_op_library: str | os.PathLike | None = None,
) -> list[ParityStats]:
    """ONNX Runtime vs PyTorch fp32 on each input set (ORT with the slab custom-op library if given).

    Tolerances: fp32 absolute (default 1e-4); fp16 relative to max |logit| (default 1e-2); int8 is
    reported only (tolerance = inf): its error depends on the calibration data, not on the export.
    """
    session = ort_session(proto_or_path, custom_op_library=custom_op_library)
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
    custom_ops: str = "none",
    custom_op_library: str | os.PathLike | None = None,
    log=None,
) -> list[ExportReport]:
    """Export `prepared` to ONNX in each requested precision; returns one report per file written.

    Args:
        prepared: from `prepare_model` (eval mode, folded).
        output: the .onnx path (fp32 or the only precision); other precisions get `<stem>.<prec>.onnx`.
        precisions: any of "fp32", "fp16" (mixed: SLA core in fp32), "int8" (QDQ, needs `calibration`).
        calibration: image folder or "digits", for int8.
        tolerance: override the fp32 (absolute) / fp16 (relative) parity tolerance.
        custom_ops: "none" (standard ops), "ort" (fused node + function body) or "trt" (fused node alone).
        custom_op_library: the slab ONNX Runtime custom-op library the parity check of a custom-op export
            loads (default: the built one, slab_edge.native.find_library("ort"); without it the "ort"
            file's function body runs and the "trt" file's parity is not checked).
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

    from slab_edge.export import custom_ops as fused

    start = time.perf_counter()
    raw = torch_to_onnx(
        prepared.model,
        prepared.data_config["input_size"],
        opset,
        dynamic_batch,
        exporter,
        custom_ops=custom_ops,
    )
    if custom_ops != "none":
        # every variant keeps the function body until it is written: shape inference, onnxslim, the fp16
        # converter and the int8 calibrator (which runs the graph in ORT) read through it
        fused.attach_function(raw)
    fp32 = finalize_graph(raw, simplify=simplify)
    meta = export_metadata(prepared, "fp32", dynamic_batch, custom_ops)
    set_metadata(fp32, meta)
    check_onnx(fp32)
    custom_nodes = fused.check_custom_graph(fp32, "ort") if custom_ops != "none" else 0
    say(f"exported {prepared.name} ({prepared.source}) with torch.onnx {exporter}, opset {opset} "
        f"in {time.perf_counter() - start:.1f} s")  # fmt: skip
    inputs = parity_inputs(meta, batch=parity_batch) if parity else {}
    library, parity_note = _parity_library(custom_ops, custom_op_library, parity)

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
        if custom_ops == "trt":
            proto = copy_model(proto)
            fused.strip_function(proto)
        if precision != "fp32" or custom_ops == "trt":
            check_onnx(proto)
        if custom_ops != "none":
            fused.check_custom_graph(proto, custom_ops)
        path = variant_path(output, precision, single)
        stats: list[ParityStats] = []

        def verify(tmp: Path, precision=precision, stats=stats) -> None:
            if not parity or parity_note.startswith("not run"):
                return
            stats.extend(check_parity(prepared.model, tmp, inputs, precision, tolerance, library))
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
            custom_ops=custom_ops,
            custom_op_nodes=custom_nodes,
            parity_note=parity_note,
        )
        reports.append(report)
        nodes = sum(report.op_counts.values())
        say(f"wrote {path} ({precision}, {path.stat().st_size / 1e6:.2f} MB, {nodes} nodes)")
        if custom_ops != "none":
            body = "with its function body" if custom_ops == "ort" else "without function body (TensorRT)"
            say(f"  {custom_nodes} fused {fused.OP_TYPE} nodes {body}; "
                f"{report.sla_core_nodes} standard-op SLA-core nodes left; parity {parity_note}")  # fmt: skip
        for s in stats:
            say(f"  parity ORT vs PyTorch {s.line()}")
    return reports


def _parity_library(
    custom_ops: str, custom_op_library: str | os.PathLike | None, parity: bool
) -> tuple[Path | None, str]:
    """(custom-op library the parity check loads, what the check runs) for a custom-op variant."""
    from slab_edge.native import find_library

    if custom_ops == "none" or not parity:
        return None, "" if parity else "not run (--no-parity-check)"
    if custom_op_library is not None:
        library = Path(custom_op_library)
        if not library.is_file():
            raise InputError(f"custom-op library not found: {library}")
    else:
        library = find_library("ort")
    if library is not None:
        return library, f"ran the slab custom-op library {library}"
    if custom_ops == "ort":
        return None, "ran the function body (slab custom-op library not built: slab-edge build-ops ort)"
    return None, "not run: ONNX Runtime needs the slab custom-op library for it (slab-edge build-ops ort)"
