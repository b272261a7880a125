"""Precision variants of an fp32 export: fp16 mixed precision and INT8 QDQ.

fp16: every node in fp16 except the SLA core (K^T V product, normalizer q . sum k + eps, division), which
stays fp32 behind explicit Cast nodes: the form strongly typed builders (TensorRT 11, TensorRT-RTX) take
as is, since they run every tensor in the type the ONNX gives it. Graph I/O stays fp32. The fused SLA node of
a custom-op export (slab_edge.export.custom_ops) is no island: it takes fp16 I/O and accumulates in fp32
inside (its kernels, plugin and function body alike), so it converts like any other node.
INT8: ONNX Runtime static quantization, QDQ format, symmetric int8 activations and weights (zero point 0,
what TensorRT consumes), per-channel weights, calibrated on real images preprocessed from the model's
own metadata. The SLA core is excluded from quantization (it stays fp32, as in the fp16 variant).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

from slab_edge.errors import BackendError
from slab_edge.export.graph import (
    SLA_CORE_TAG,
    copy_model,
    merge_duplicate_producers,
    remove_fp16_round_trips,
    sla_core_node_names,
    tensor_elem_types,
    topological_sort,
)

#: SLA-core ops that must compute in fp32 (their inputs are fp32 tensors)
FP32_CORE_OPS = ("MatMul", "ReduceSum", "Div")
#: ops whose inputs get Q/DQ pairs: the GEMM-like ops, where int8 pays off. Element-wise ops stay float
#: (TensorRT fuses them into the GEMM epilogues; a quantized shared scalar constant, as ORT makes for
#: GELU's "+ 1", is rejected by TensorRT's QDQ optimizer).
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


def sla_core_input_types(proto) -> dict[str, list[int]]:
    """{SLA-core node name: elem types of its data inputs} for the MatMul/ReduceSum/Div of the core."""
    types = tensor_elem_types(proto)
    out = {}
    for node in proto.graph.node:
        if SLA_CORE_TAG in node.name and node.op_type in FP32_CORE_OPS:
            data_inputs = node.input[:1] if node.op_type == "ReduceSum" else node.input
            out[node.name] = [types.get(name, 0) for name in data_inputs]
    return out


def custom_node_io_types(proto) -> dict[str, list[int]]:
    """{fused SLA node name: elem types of its inputs and its output} (custom-op exports)."""
    from slab_edge.export.custom_ops import custom_nodes

    nodes = custom_nodes(proto)
    types = tensor_elem_types(proto) if nodes else {}
    return {node.name: [types.get(x, 0) for x in [*node.input, *node.output]] for node in nodes}


def convert_fp16(fp32_proto):
    """fp16 ModelProto with the SLA core kept in fp32 (explicit Casts) and fp32 graph inputs/outputs; a fused
    SLA node gets fp16 inputs and output.

    Raises:
        BackendError: if the converted graph does not compute the SLA core in fp32 or leaves a fused node
            with other than fp16 I/O (a converter change).
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    block = sla_core_node_names(fp32_proto)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = convert_float_to_float16(copy_model(fp32_proto), keep_io_types=True, node_block_list=block)
    merge_duplicate_producers(proto)
    topological_sort(proto)
    remove_fp16_round_trips(proto)
    not_fp32 = {
        k: v for k, v in sla_core_input_types(proto).items() if any(t != onnx.TensorProto.FLOAT for t in v)
    }
    if not_fp32:
        name = next(iter(not_fp32))
        raise BackendError(
            f"fp16 conversion left SLA-core node {name} outside fp32 (input types {not_fp32[name]})"
        )
    not_fp16 = {k: v for k, v in custom_node_io_types(proto).items() if set(v) != {onnx.TensorProto.FLOAT16}}
    if not_fp16:
        name = next(iter(not_fp16))
        raise BackendError(f"fp16 conversion left fused SLA node {name} with I/O types {not_fp16[name]}")
    return proto


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs advice ("consider pre-processing") on the root logger: mute it."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(
    fp32_proto,
    calibration: str | os.PathLike,
    count: int = 64,
    per_channel: bool = True,
    batch_size: int = 8,
    log=None,
):
    """INT8 QDQ ModelProto (symmetric, zero point 0) calibrated on `count` images of `calibration`.

    Args:
        fp32_proto: the folded fp32 export (with slab_edge metadata).
        calibration: image folder or "digits".
        count: calibration images.
        per_channel: per-output-channel weight scales.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from slab_edge.export.calibration import ImageCalibrationReader, calibration_images
    from slab_edge.runtime.metadata import decode_metadata

    meta = decode_metadata({p.key: p.value for p in fp32_proto.metadata_props})
    input_name = meta.get("input_name") or fp32_proto.graph.input[0].name
    images = calibration_images(calibration, count)
    reader = ImageCalibrationReader(images, meta, input_name, batch_size=batch_size)
    if log:
        log(f"calibrating int8 on {len(images)} images from {calibration}")
    with tempfile.TemporaryDirectory(prefix="slab-edge-int8-") as tmp, _quiet_root_logger():
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(fp32_proto, str(src))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_static(
                    str(src),
                    str(dst),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    per_channel=per_channel,
                    op_types_to_quantize=list(QUANTIZED_OPS),
                    nodes_to_exclude=sla_core_node_names(fp32_proto),
                    calibrate_method=CalibrationMethod.MinMax,
                    # biases stay float: TensorRT's DequantizeLinear takes int8/fp8 inputs, not int32 biases
                    extra_options={
                        "ActivationSymmetric": True,
                        "WeightSymmetric": True,
                        "QuantizeBias": False,
                    },
                )
        except Exception as err:  # ORT's quantizer raises assorted types; report the first line
            raise BackendError(f"int8 quantization failed: {str(err).strip().splitlines()[0]}") from err
        return onnx.load(str(dst))
