#!/usr/bin/env python3
"""Example 01: train a SLAB model on the embedded digits, recalibrate BN, fold, evaluate — one command each.

    python examples/01_train_and_fold/train_and_fold.py                 # the digits recipe (15 epochs)
    python examples/01_train_and_fold/train_and_fold.py --epochs 3 --threads 1   # quick look on a busy CPU

Runs, in order (each line is also a shell command):
    slab-edge train --output OUT/train --no-deploy --recal-epochs 0 [--epochs N]
    slab-edge recalibrate --checkpoint OUT/train --epochs 1 --output OUT/recalibrated.safetensors
    slab-edge fold --checkpoint OUT/recalibrated.safetensors --data digits --output OUT/deploy.safetensors
    slab-edge evaluate --checkpoint OUT/deploy.safetensors
(`slab-edge train` alone does all four when --deploy is left on; they are split here to show the stages.)
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/examples/01_train_and_fold", help="output folder")
    parser.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: the digits recipe)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy machine)")
    args = parser.parse_args(argv)

    from slab_edge.cli import main as cli

    out = Path(args.out)
    train = ["train", "--output", str(out / "train"), "--overwrite", "--no-deploy", "--recal-epochs", "0"]
    if args.epochs:
        train += ["--epochs", str(args.epochs)]
    if args.threads:
        train += ["--threads", str(args.threads)]
    steps = [
        train,
        ["recalibrate", "--checkpoint", str(out / "train"), "--epochs", "1",
         "--output", str(out / "recalibrated.safetensors")],
        ["fold", "--checkpoint", str(out / "recalibrated.safetensors"), "--data", "digits",
         "--output", str(out / "deploy.safetensors")],
        ["evaluate", "--checkpoint", str(out / "deploy.safetensors")],
    ]  # fmt: skip
    for cmd in steps:
        print(f"\n$ slab-edge {shlex.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        code = cli(cmd)
        print(f"({time.perf_counter() - t0:.1f} s)")
        if code:
            return code
    print(f"\ndeploy checkpoint: {out / 'deploy.safetensors'} (next: examples/02_export_onnx)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
