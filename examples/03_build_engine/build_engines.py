#!/usr/bin/env python3
"""Example 03: build TensorRT / TensorRT-RTX engines from the exported ONNX files, one per precision.

    python examples/03_build_engine/build_engines.py                    # uses example 02's files if present
    python examples/03_build_engine/build_engines.py --onnx model.onnx model.fp16.onnx --max-batch 16

Picks the builder that is importable (tensorrt, else tensorrt_rtx). Strongly typed builders (TensorRT 11,
TensorRT-RTX) build each file in its own precision; TensorRT 10 also builds an fp16 engine from the fp32
file with builder flags (the SLA core pinned to fp32). Prints build time, engine size and the sidecar.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EX02 = Path("runs/examples/02_export_onnx")


def demo_onnx(out: Path) -> list[Path]:
    """Example 02's files, else a random-weight slab_deit_digits exported in fp32 and fp16 (needs torch)."""
    found = [
        p for p in (EX02 / "digits.onnx", EX02 / "digits.fp16.onnx", EX02 / "digits.int8.onnx") if p.is_file()
    ]
    if found:
        return found
    from slab_edge.export.checkpoint import prepare_model
    from slab_edge.export.onnx_export import export_model

    print("example 02 has not run: exporting a random-weight slab_deit_digits")
    reports = export_model(
        prepare_model("slab_deit_digits"), out / "digits.onnx", ["fp32", "fp16"], log=print
    )
    return [r.path for r in reports]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", nargs="+", type=Path, help="ONNX files (default: example 02's)")
    parser.add_argument("--out", type=Path, default=Path("runs/examples/03_build_engine"))
    parser.add_argument("--builder", choices=["tensorrt", "tensorrt_rtx"], default=None)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument(
        "--opt-level", type=int, default=None, help="builder optimization level (0 = fastest)"
    )
    args = parser.parse_args(argv)

    from slab_edge.errors import SlabEdgeError
    from slab_edge.export.trt_builder import BuildOptions, build_engine, import_builder, strongly_typed_only

    try:
        _, flavour, version = import_builder(args.builder)
    except SlabEdgeError as err:
        print(f"cannot build engines here: {err}")
        return 0
    print(
        f"builder: {flavour} {version} "
        f"({'strongly' if strongly_typed_only(flavour, version) else 'weakly'} typed)"
    )
    onnx_files = args.onnx or demo_onnx(args.out)
    jobs = [(path, "auto") for path in onnx_files]
    if not strongly_typed_only(flavour, version):  # TensorRT 10: fp16 from the fp32 file, by builder flag
        jobs += [
            (path, "fp16") for path in onnx_files if not path.name.endswith((".fp16.onnx", ".int8.onnx"))
        ]
    for path, precision in jobs:
        suffix = "" if precision == "auto" else f".{precision}-flag"
        engine = args.out / f"{path.name[: -len('.onnx')]}{suffix}.engine"
        options = BuildOptions(
            builder=flavour,
            precision=precision,
            max_batch=args.max_batch,
            optimization_level=args.opt_level,
            timing_cache=str(args.out / "timing.cache") if flavour == "tensorrt" else None,
        )
        try:
            report = build_engine(path, engine, options, log=print)
        except SlabEdgeError as err:
            print(f"  {path.name}: {err}")
            continue
        side = report.sidecar_data
        summary = {k: side[k] for k in ("builder", "gpu", "precision", "profiles")}
        print(f"  {engine.name}: {report.seconds:.2f} s, {report.engine_bytes / 1e6:.2f} MB")
        print("  sidecar: " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
