#!/usr/bin/env python3
"""Example 04: run an exported SLAB model the way a device does — torch-free, from the model file alone.

Here (no arguments): exports a random-weight `slab_deit_digits` and writes 40 digit images (needs the
[export] extra), then runs the on-device part with ONNX Runtime. On a device: pass your files; nothing
below `on_device()` imports torch.

    python examples/04_run_on_device/run_on_device.py
    python examples/04_run_on_device/run_on_device.py --onnx digits.onnx --images photos/
    python3 run_on_device.py --onnx digits.onnx --engine digits.engine --images photos/    # Jetson
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE_OUT = Path("runs/examples/04_run_on_device")


# -- preparation (this machine only; imports torch through slab_edge.export) --------------------------------
def make_demo_model(out: Path) -> Path:
    """Export slab_deit_digits (random weights: the point is the pipeline, not the predictions)."""
    from slab_edge.export.checkpoint import prepare_model
    from slab_edge.export.onnx_export import export_model

    path = out / "slab_deit_digits.onnx"
    if not path.exists():
        labels = [str(i) for i in range(10)]
        export_model(prepare_model("slab_deit_digits", labels=labels), path, log=print)
    return path


def make_demo_images(out: Path, count: int = 40) -> Path:
    """The last `count` scikit-learn digits as 8x8 PNGs named digit_<label>_<index>.png (the model's own
    preprocessing upsamples them), plus one corrupt file to show how folders with bad files behave."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    for index in range(len(digits.images) - count, len(digits.images)):
        pixels = np.clip(np.round(digits.images[index] * (255 / 16)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"digit_{digits.target[index]}_{index}.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    return folder


# -- the on-device part (torch-free) ------------------------------------------------------------------------
def on_device(onnx: Path, engine: Path | None, images: Path, threads: int | None, iters: int) -> int:
    from slab_edge.runtime import load
    from slab_edge.runtime.benchmark import benchmark_models, format_report
    from slab_edge.runtime.compare import compare_runners, format_comparison, session_runner
    from slab_edge.runtime.infer import classify, collect_images, format_summary

    sources = collect_images([str(images)])
    print(f"\n== 1. classify {len(sources)} files with ONNX Runtime ({onnx.name}) ==")
    with load(onnx, threads=threads) as session:
        print(f"   {session!r}")
        meta = session.metadata
        print(f"   preprocessing from the file's metadata: input {meta.get('input_size')}, "
              f"mean {meta.get('mean')}, interpolation {meta.get('interpolation')}")  # fmt: skip
        result = classify(session, sources, top=3, batch=8, on_skip=lambda p, r: print(f"   skipped {r}"))
    for prediction in result.predictions[:5]:
        best = ", ".join(f"{p['label']} {p['score']:.2f}" for p in prediction["top_k"])
        print(f"   {Path(prediction['path']).name}: {best}")
    print(f"   {format_summary(result.summary())}")
    truth = [re.match(r"digit_(\d+)_", Path(p["path"]).name) for p in result.predictions]
    if all(truth):
        hits = sum(m.group(1) == p["top_k"][0]["label"] for m, p in zip(truth, result.predictions))
        print(f"   top-1 vs the file names: {hits}/{len(truth)} (the demo's random weights: chance level)")

    models = [onnx] + ([engine] if engine else [])
    print(f"\n== 2. latency ({iters} interleaved iterations, batch 1) ==")
    options = [{"threads": threads}] + ([{}] if engine else [])
    report = benchmark_models(models, names=["onnxruntime", "tensorrt"][: len(models)], warmup=5,
                              iters=iters, session_options=options)  # fmt: skip
    print(format_report(report))

    if engine:
        print("\n== 3. ONNX Runtime vs TensorRT on the same images ==")
        from slab_edge.runtime.preprocess import transform_for

        with load(onnx, threads=threads) as ort_session, load(engine) as trt_session:
            transform = transform_for(ort_session)
            batch = transform.batch([p["path"] for p in result.predictions])
            comparison = compare_runners(
                [session_runner(ort_session), session_runner(trt_session)], batch, atol=5e-2, rtol=5e-2
            )
        print(format_comparison(comparison))
        return 0 if comparison["passed"] else 1
    print("\n(no --engine: on a Jetson build one with `slab-edge build model.onnx` and pass it; see README)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, help="exported model (default: export a demo model here)")
    parser.add_argument("--engine", type=Path, help="TensorRT engine built from it (device only)")
    parser.add_argument("--images", type=Path, help="image folder (default: 40 digits written here)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    parser.add_argument("--iters", type=int, default=20, help="benchmark iterations")
    parser.add_argument("--out", type=Path, default=HERE_OUT, help="where the demo model and images go")
    args = parser.parse_args(argv)
    if args.onnx is None or args.images is None:
        print(f"preparing demo files in {args.out} (this part needs torch; a device skips it)")
        args.out.mkdir(parents=True, exist_ok=True)
    onnx = args.onnx or make_demo_model(args.out)
    images = args.images or make_demo_images(args.out)
    from slab_edge.errors import SlabEdgeError

    try:
        return on_device(onnx, args.engine, images, args.threads, args.iters)
    except SlabEdgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
