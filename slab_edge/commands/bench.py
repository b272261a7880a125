"""`slab-edge bench MODEL [MODEL_B]`: latency percentiles, throughput, peak RSS; two models A/B interleaved.

Torch-free. With two models they take turns in bursts (a few untimed runs after each switch, then
--burst timed runs; the order alternating), and the A/B latency ratio is printed: the fair way to compare
on a machine whose speed drifts. See slab_edge.runtime.benchmark.time_interleaved for why the bursts.
"""

from __future__ import annotations

import argparse
import json

from slab_edge.commands._runtime_args import add_backend_arguments, backend_inputs, session_options
from slab_edge.commands.argtypes import non_negative_int, output_file, positive_int
from slab_edge.errors import InputError
from slab_edge.runtime.benchmark import BURST, SWITCH_DISCARD


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="one or two .onnx / .engine files (A, B)")
    parser.add_argument("--names", nargs="+", default=None, help="labels for the models (default: A B)")
    parser.add_argument(
        "--warmup", type=non_negative_int, default=10, help="untimed runs per model first (default: 10)"
    )
    parser.add_argument("--iters", type=positive_int, default=100, help="timed runs per model (default: 100)")
    parser.add_argument(
        "--batch", type=positive_int, default=1, help="batch size of the random input (default: 1)"
    )
    parser.add_argument("--no-interleave", action="store_true", help="time A fully, then B (not recommended)")
    parser.add_argument(
        "--burst", type=positive_int, default=BURST, help=f"timed runs per turn (default: {BURST})"
    )
    parser.add_argument(
        "--switch-discard",
        type=non_negative_int,
        default=SWITCH_DISCARD,
        help=f"untimed runs at the start of each turn (default: {SWITCH_DISCARD})",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random inputs")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    parser.add_argument(
        "--output", type=output_file, help="also write the JSON report to this file (atomically)"
    )
    add_backend_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from slab_edge.io import atomic_write_json, check_outputs_distinct
    from slab_edge.runtime.benchmark import benchmark_models, format_report

    if len(args.models) > 2:
        raise InputError(f"bench takes one or two models, got {len(args.models)}")
    check_outputs_distinct({"--output": args.output}, backend_inputs(args, args.models))
    report = benchmark_models(
        args.models,
        names=args.names,
        batch=args.batch,
        warmup=args.warmup,
        iters=args.iters,
        interleave=not args.no_interleave,
        burst=args.burst,
        switch_discard=args.switch_discard,
        session_options=[session_options(args, m) for m in args.models],
        seed=args.seed,
    )
    if args.output:
        atomic_write_json(args.output, report)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
