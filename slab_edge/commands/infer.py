"""`slab-edge infer MODEL IMAGES...`: top-k classes for image files, folders or globs (torch-free).

Unreadable files found in a folder or glob are skipped with a warning and counted in the summary;
an unreadable file named explicitly (or any, with --strict) is an error.
"""

from __future__ import annotations

import argparse
import json
import sys

from slab_edge.commands._runtime_args import add_backend_arguments, backend_inputs, session_options
from slab_edge.commands.argtypes import float_range, output_file, positive_float, positive_int, probability
from slab_edge.runtime.preprocess import DEFAULT_MAX_PIXELS, FILTERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=".onnx (ONNX Runtime) or .engine/.plan (TensorRT + sidecar)")
    parser.add_argument("images", nargs="+", help="image files, folders, glob patterns ('photos/**/*.jpg')")
    parser.add_argument("--top-k", type=positive_int, default=5, help="classes per image (default: 5)")
    parser.add_argument(
        "--batch", type=positive_int, default=None, help="images per run (default: 1 / fixed batch)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument(
        "--output", type=output_file, help="also write the JSON result to this file (atomically)"
    )
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument("--strict", action="store_true", help="fail on an unreadable file in a folder/glob")
    parser.add_argument("--quiet", action="store_true", help="text mode: print only the summary line")
    add_backend_arguments(parser)
    pre = parser.add_argument_group("preprocessing overrides (default: the model's own metadata)")
    pre.add_argument("--crop-pct", type=float_range(0, 1.5, low_open=True), default=None)
    pre.add_argument("--interpolation", choices=sorted(FILTERS), default=None)
    pre.add_argument("--mean", type=probability, nargs="+", default=None, help="per channel, 0-1 scale")
    pre.add_argument("--std", type=positive_float, nargs="+", default=None, help="per channel, 0-1 scale")
    pre.add_argument(
        "--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, help="refuse larger images"
    )


def run(args: argparse.Namespace) -> int:
    from slab_edge.io import atomic_write_json, check_outputs_distinct
    from slab_edge.runtime.infer import classify, collect_images, format_prediction, format_summary
    from slab_edge.runtime.loader import load
    from slab_edge.runtime.preprocess import transform_for

    sources = collect_images(args.images, recursive=args.recursive)
    inputs = [*backend_inputs(args, [args.model]), *(("image", s.path) for s in sources)]
    check_outputs_distinct({"--output": args.output}, inputs)

    def warn(_path, reason: str) -> None:
        print(f"slab-edge infer: warning: skipped {reason}", file=sys.stderr)

    with load(args.model, **session_options(args, args.model)) as session:
        transform = transform_for(
            session,
            crop_pct=args.crop_pct,
            interpolation=args.interpolation,
            mean=tuple(args.mean) if args.mean else None,
            std=tuple(args.std) if args.std else None,
            max_pixels=args.max_pixels,
        )
        result = classify(session, sources, args.top_k, args.batch, transform, args.strict, warn)
        report = {
            "model": str(args.model),
            "model_name": session.metadata.get("model"),
            "backend": session.backend,
            "predictions": result.predictions,
            "skipped": result.skipped,
            "summary": result.summary(),
        }
    if args.output:
        atomic_write_json(args.output, report)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if not args.quiet:
        for prediction in result.predictions:
            print(format_prediction(prediction))
    print(format_summary(report["summary"]))
    return 0
