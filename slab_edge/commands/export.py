"""`slab-edge export`: model (+ checkpoint) -> ONNX in fp32, fp16-mixed and/or int8 QDQ, checked vs PyTorch.

    slab-edge export slab_deit_digits --checkpoint runs/digits -o digits.onnx --precision fp32 fp16 int8 \\
        --calib-data digits
    slab-edge export slab_deit_tiny_patch16_224 --model-kwargs '{"embed_dim": 24}' -o tiny.onnx
    slab-edge export slab_deit_tiny_patch16_224 -o fused.onnx --custom-ops ort     # fused SLA nodes

A training checkpoint is folded first; a deploy checkpoint loads into the deploy structure. Every file is
compared with PyTorch on random and real (digits) inputs before it is written; the numbers are printed.
"""

from __future__ import annotations

import argparse
import json
import sys

from slab_edge.commands.argtypes import int_range, output_file, positive_float, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="model name (slab-edge zoo, official alias or timm); "
                        "optional when the checkpoint names it")  # fmt: skip
    parser.add_argument("-c", "--checkpoint", help="training/deploy checkpoint: run folder, manifest .json, "
                        ".safetensors or .pt (default: random weights)")  # fmt: skip
    parser.add_argument("-o", "--output", type=output_file, help="output .onnx (default: <model>.onnx); with "
                        "several precisions fp16/int8 go to <stem>.fp16.onnx / <stem>.int8.onnx")  # fmt: skip
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16", "int8"],
                        help="one or more variants (default: fp32)")  # fmt: skip
    parser.add_argument("--labels", help="class names: text file (one per line) or JSON list")
    parser.add_argument("--model-kwargs", help="JSON constructor arguments, e.g. '{\"embed_dim\": 24}'")
    parser.add_argument("--ema", action="store_true", help="export the EMA weights of a training run")
    parser.add_argument("--no-fold", action="store_true", help="export the eval graph without folding norms")
    graph = parser.add_argument_group("graph")
    graph.add_argument("--opset", type=int_range(17), default=18, help="ONNX opset (>= 17; default 18)")
    graph.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo",
                       help="torch.onnx path (default dynamo; torchscript: legacy fallback)")  # fmt: skip
    graph.add_argument("--static-batch", action="store_true", help="fixed batch (default: dynamic)")
    graph.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    graph.add_argument("--custom-ops", choices=["none", "ort", "trt"], default="none",
                       help="SLA cores as fused SlabLinearAttention nodes: 'ort' with a function body (runs "
                       "everywhere; fast with the slab ONNX Runtime library), 'trt' without (TensorRT "
                       "plugin); default 'none': standard ops")  # fmt: skip
    graph.add_argument("--custom-op-library", metavar="PATH", help="slab ONNX Runtime library for the "
                       "parity check of a --custom-ops export (default: the built one)")  # fmt: skip
    int8 = parser.add_argument_group("int8")
    int8.add_argument("--calib-data", help="calibration images: a folder (recursive) or 'digits'")
    int8.add_argument(
        "--calib-count", type=positive_int, default=64, help="calibration images used (default 64)"
    )
    int8.add_argument(
        "--per-tensor", action="store_true", help="per-tensor weight scales (default per channel)"
    )
    check = parser.add_argument_group("parity check")
    check.add_argument(
        "--no-parity-check", action="store_true", help="skip the ONNX Runtime vs PyTorch check"
    )
    check.add_argument("--tolerance", type=positive_float, default=None,
                       help="fp32: max |diff| (default 1e-4); fp16: fraction of max |logit| "
                       "(default 1e-2)")  # fmt: skip
    check.add_argument(
        "--parity-batch", type=positive_int, default=2, help="images per parity input set (default 2)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary at the end")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from slab_edge.errors import InputError
    from slab_edge.export.checkpoint import prepare_model
    from slab_edge.export.onnx_export import export_model

    kwargs = None
    if args.model_kwargs:
        try:
            kwargs = json.loads(args.model_kwargs)
        except ValueError as err:
            raise InputError(f"--model-kwargs is not valid JSON ({err})") from None
        if not isinstance(kwargs, dict):
            raise InputError("--model-kwargs must be a JSON object")
    if args.output:
        _check_outputs(args, Path(args.output))
    prepared = prepare_model(
        args.model,
        args.checkpoint,
        model_kwargs=kwargs,
        labels=args.labels,
        fold=not args.no_fold,
        ema=args.ema,
    )
    output = Path(args.output or f"{prepared.name}.onnx")
    _check_outputs(args, output)
    reports = export_model(
        prepared,
        output,
        precisions=args.precision,
        opset=args.opset,
        dynamic_batch=not args.static_batch,
        exporter=args.exporter,
        simplify=not args.no_simplify,
        parity=not args.no_parity_check,
        parity_batch=args.parity_batch,
        tolerance=args.tolerance,
        calibration=args.calib_data,
        calibration_count=args.calib_count,
        int8_per_channel=not args.per_tensor,
        custom_ops=args.custom_ops,
        custom_op_library=args.custom_op_library,
        log=print,
    )
    if args.json:
        print(json.dumps([_summary(r) for r in reports], indent=2))
    if prepared.weights == "random":
        print(
            "slab-edge export: warning: no --checkpoint: the export holds randomly initialised weights "
            "(its metadata says weights: random)",
            file=sys.stderr,
        )
    return 0


def _check_outputs(args: argparse.Namespace, output) -> None:
    """Every file the export writes can be written and is none of its inputs."""
    from slab_edge.export.onnx_export import variant_path
    from slab_edge.io import check_output, check_outputs_distinct

    single = len(set(args.precision)) == 1
    outputs = [("--output", variant_path(output, p, single)) for p in dict.fromkeys(args.precision)]
    for _, path in outputs:
        check_output(path, label="--output")
    inputs = {
        "--checkpoint": args.checkpoint,
        "--labels": args.labels,
        "--calib-data": args.calib_data,
        "--custom-op-library": args.custom_op_library,
    }
    check_outputs_distinct(outputs, inputs)


def _summary(report) -> dict:
    from dataclasses import asdict

    return {
        "path": str(report.path),
        "precision": report.precision,
        "nodes": sum(report.op_counts.values()),
        "op_counts": report.op_counts,
        "sla_core_nodes": report.sla_core_nodes,
        "custom_ops": report.custom_ops,
        "custom_op_nodes": report.custom_op_nodes,
        "parity_note": report.parity_note,
        "parity": [asdict(p) for p in report.parity],
    }
