"""`slab-edge compare`: PyTorch / ONNX Runtime / TensorRT outputs on the same inputs, against tolerances.

    slab-edge compare model.onnx model.engine --images val/ --atol 1e-2       # ORT vs TensorRT (no torch)
    slab-edge compare model.onnx --torch slab_deit_tiny_patch16_224 --checkpoint ckpt.safetensors
    slab-edge compare model.onnx model.fp16.onnx model.int8.onnx              # tolerances by precision

The first backend is the reference: torch when --torch is given, else the first model file. Tolerances
not given come from the precisions of each compared pair (slab_edge.runtime.compare.default_tolerance);
the report says which were used and why.
Exit status 1 when any backend fails the tolerances (errors exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from slab_edge.commands._runtime_args import add_backend_arguments, backend_inputs, session_options
from slab_edge.commands.argtypes import (
    float_range,
    non_negative_float,
    non_negative_int,
    output_file,
    positive_int,
)
from slab_edge.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL", help=".onnx / .engine files to compare")
    torch_group = parser.add_argument_group("PyTorch reference (needs the [train] extra)")
    torch_group.add_argument("--torch", metavar="NAME", help="model name (slab-edge zoo or timm)")
    torch_group.add_argument("--checkpoint", help="training or deploy checkpoint for --torch")
    torch_group.add_argument(
        "--reparameterize", action="store_true", help="fold the torch model's norms first"
    )
    torch_group.add_argument(
        "--model-kwargs", default=None, help="JSON constructor arguments, e.g. '{\"depth\": 2}'"
    )
    data = parser.add_argument_group("inputs (default: --random 8)")
    data.add_argument("--images", nargs="+", help="image files / folders / globs, preprocessed by metadata")
    data.add_argument("--random", type=positive_int, default=None, metavar="N", help="N seeded random inputs")
    data.add_argument("--seed", type=non_negative_int, default=0)
    data.add_argument(
        "--batch", type=positive_int, default=None, help="batch size per run (default: 1 / fixed batch)"
    )
    tol = parser.add_argument_group(
        "tolerances: pass iff |x - ref| <= atol + rtol * |ref| everywhere",
        "Without --atol/--rtol each pair gets a default from the two models' precisions (metadata): "
        "atol = 1e-4 x max|ref| for fp32 vs fp32, 1e-2 x for fp16 or TF32, 0.5 x and top-1 >= 0.8 for "
        "int8 QDQ, rtol 0. Given ones win (an unset one of the two is 0).",
    )
    tol.add_argument(
        "--atol", type=non_negative_float, default=None, help="absolute tolerance (default: by precision)"
    )
    tol.add_argument(
        "--rtol", type=non_negative_float, default=None, help="relative tolerance (default: by precision)"
    )
    tol.add_argument(
        "--min-top1",
        type=float_range(0, 1, low_open=True),
        default=None,
        help="also require this top-1 agreement (0-1; default: by precision, only int8 has one)",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of text")
    parser.add_argument(
        "--output", type=output_file, help="also write the JSON report to this file (atomically)"
    )
    add_backend_arguments(parser)


def _inputs(args: argparse.Namespace, runners) -> tuple:
    """(batch [N, C, H, W] float32, description) from --images or --random."""
    from slab_edge.runtime.compare import random_batch
    from slab_edge.runtime.infer import collect_images
    from slab_edge.runtime.preprocess import EvalTransform

    source = next((r for r in runners if r.metadata.get("input_size")), runners[0])
    if args.images:
        transform = EvalTransform.from_metadata(source.metadata, source.input_shape)
        arrays = []
        for item in collect_images(args.images):
            try:
                arrays.append(transform(item.path))
            except InputError as err:
                if item.explicit:
                    raise
                print(f"slab-edge compare: warning: skipped {err}", file=sys.stderr)
        if not arrays:
            raise InputError("no image could be read")
        return np.stack(arrays), f"{len(arrays)} images"
    count = args.random if args.random is not None else 8
    shape = source.input_shape
    size = source.metadata.get("input_size")
    if size:
        shape = (None, *size)
    return random_batch(shape, count, args.seed), f"{count} random inputs (seed {args.seed})"


def run(args: argparse.Namespace) -> int:
    from slab_edge.io import atomic_write_json, check_outputs_distinct
    from slab_edge.runtime.compare import compare_runners, format_comparison, load_runner, torch_runner

    if args.checkpoint and not args.torch:
        raise InputError("--checkpoint belongs to --torch NAME")
    if len(args.models) + bool(args.torch) < 2:
        raise InputError("compare needs two backends: two model files, or --torch NAME and a model file")
    inputs = [*backend_inputs(args, args.models), ("--checkpoint", args.checkpoint)]
    if args.images and args.output:
        from slab_edge.runtime.infer import collect_images

        inputs += [("image", s.path) for s in collect_images(args.images)]
    check_outputs_distinct({"--output": args.output}, inputs)
    kwargs = None
    if args.model_kwargs:
        try:
            kwargs = json.loads(args.model_kwargs)
        except ValueError as err:
            raise InputError(f"--model-kwargs is not valid JSON ({err})") from None
    runners = []
    try:
        if args.torch:
            runners.append(torch_runner(args.torch, args.checkpoint, args.reparameterize, kwargs))
        for model in args.models:
            runners.append(load_runner(model, session_options(args, model), args.batch))
        batch, described = _inputs(args, runners)
        report = compare_runners(runners, batch, args.atol, args.rtol, args.min_top1)
    finally:
        for runner in runners:
            runner.close()
    report["inputs"]["source"] = described
    if args.output:
        atomic_write_json(args.output, report)
    print(json.dumps(report, indent=2) if args.json else format_comparison(report))
    return 0 if report["passed"] else 1
