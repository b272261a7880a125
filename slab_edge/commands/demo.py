"""`slab-edge demo` (`make demo`): the whole job on the embedded digits.

train -> recalibrate -> fold -> deploy checkpoint -> export ONNX (fp32/fp16/int8) -> build an engine if a
TensorRT builder is installed -> torch-free ONNX Runtime inference over the held-out digits: accuracy,
parity and latency.

slab-edge demo                       # ~2-3 minutes of training on 2 CPU cores
slab-edge demo --epochs 3 --output /tmp/demo --threads 1
"""

from __future__ import annotations

import argparse

from slab_edge.commands.argtypes import output_folder, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", type=output_folder, default="runs/demo", help="demo folder (default runs/demo)"
    )
    parser.add_argument(
        "--epochs", type=positive_int, default=None, help="training epochs (default: the digits recipe)"
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (1 on a busy machine)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--train-only", action="store_true", help="stop after the deploy checkpoint")
    parser.add_argument(
        "--set",
        dest="set_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any training key",
    )


def run(args: argparse.Namespace) -> int:
    from slab_edge.train.config import parse_set_overrides
    from slab_edge.train.demo import DEMO_STEPS, run_demo

    overrides = parse_set_overrides(args.set_overrides)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.threads is not None:
        overrides["threads"] = args.threads
    if args.no_progress:
        overrides["progress"] = False
    steps = list(DEMO_STEPS)
    if not args.train_only:
        from slab_edge.export.demo import DEPLOY_STEPS

        steps += DEPLOY_STEPS
    run_demo(args.output, steps=steps, **overrides)
    return 0
