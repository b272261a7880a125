"""`slab-edge demo` (`make demo`): train on digits -> recalibrate -> fold -> evaluate -> deploy checkpoint.

slab-edge demo                       # ~2-3 minutes of training on 2 CPU cores
slab-edge demo --epochs 3 --output /tmp/demo --threads 1
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="runs/demo", help="demo folder (default runs/demo)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: the digits recipe)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy machine)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    from slab_edge.train.demo import run_demo

    overrides = parse_set_overrides(args.set_overrides)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.threads is not None:
        overrides["threads"] = args.threads
    if args.no_progress:
        overrides["progress"] = False
    run_demo(args.output, **overrides)
    return 0
