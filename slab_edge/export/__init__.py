"""Export: PyTorch -> ONNX (fp32, fp16-mixed, int8 QDQ) and ONNX -> TensorRT / TensorRT-RTX engines.

    from slab_edge.export import prepare_model, export_model, build_engine, BuildOptions
    prepared = prepare_model("slab_deit_digits", "runs/digits")          # folds a training checkpoint
    export_model(prepared, "digits.onnx", precisions=["fp32", "fp16", "int8"], calibration="digits")
    build_engine("digits.fp16.onnx", options=BuildOptions(max_batch=8))

Names resolve lazily: importing this package loads neither torch nor TensorRT.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "prepare_model": "slab_edge.export.checkpoint",
    "PreparedModel": "slab_edge.export.checkpoint",
    "export_model": "slab_edge.export.onnx_export",
    "ExportReport": "slab_edge.export.onnx_export",
    "convert_fp16": "slab_edge.export.precision",
    "quantize_int8": "slab_edge.export.precision",
    "build_engine": "slab_edge.export.trt_builder",
    "BuildOptions": "slab_edge.export.trt_builder",
    "BuildReport": "slab_edge.export.trt_builder",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slab_edge.export' has no attribute {name!r}")
