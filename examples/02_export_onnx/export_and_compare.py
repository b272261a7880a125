#!/usr/bin/env python3
"""Example 02: export a trained digits model to ONNX in fp32, fp16-mixed and int8, and compare them.

    python examples/02_export_onnx/export_and_compare.py                       # trains a quick model first
    python examples/02_export_onnx/export_and_compare.py --checkpoint runs/slab_deit_digits-digits

Prints the parity of every file against PyTorch (random and real inputs) and the held-out digits accuracy
table: PyTorch vs ONNX Runtime fp32 / fp16 / int8 on the same preprocessed images. Writes the .onnx files
and accuracy.json under --out.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", help="run folder / model file of slab-edge train (default: train one)"
    )
    parser.add_argument("--out", default="runs/examples/02_export_onnx", help="output folder")
    parser.add_argument("--epochs", type=int, default=12, help="epochs for the quick training run")
    parser.add_argument("--calib-count", type=int, default=128, help="int8 calibration images (train split)")
    args = parser.parse_args(argv)

    from slab_edge.cli import main as cli
    from slab_edge.export.accuracy import evaluate_variants, format_table
    from slab_edge.export.checkpoint import prepare_model
    from slab_edge.export.onnx_export import export_model
    from slab_edge.io import atomic_write_json

    out = Path(args.out)
    checkpoint = Path(args.checkpoint) if args.checkpoint else out / "train"
    if not args.checkpoint and not (checkpoint / "deploy.safetensors").is_file():
        print(f"== training slab_deit_digits on digits for {args.epochs} epochs -> {checkpoint}")
        code = cli(["train", "--data", "digits", "--epochs", str(args.epochs), "--output", str(checkpoint),
                    "--overwrite", "--no-progress"])  # fmt: skip
        if code:
            return code

    print(f"== export {checkpoint}")
    prepared = prepare_model(checkpoint=checkpoint)
    reports = export_model(
        prepared,
        out / "digits.onnx",
        precisions=["fp32", "fp16", "int8"],
        calibration="digits",
        calibration_count=args.calib_count,
        log=print,
    )

    print("== held-out digits: PyTorch vs ONNX Runtime")
    rows = evaluate_variants(prepared.model, {f"onnxruntime {r.precision}": r.path for r in reports})
    print(format_table(rows))
    atomic_write_json(
        out / "accuracy.json",
        {
            "checkpoint": str(checkpoint),
            "model": prepared.name,
            "rows": [asdict(r) for r in rows],
            "parity": {r.precision: [asdict(p) for p in r.parity] for r in reports},
        },
    )
    print(f"wrote {out / 'accuracy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
