"""ONNX Runtime CUDA EP check (issue 4, item 7): fp32 and fp16-mixed exports of a zoo model on the GPU.

Prints parity vs torch on the same GPU (TF32 off for the fp32 reference) and median latency at two batch
sizes, host copies included; the fp32 file runs twice, with the CUDA EP's default TF32 GEMMs and with
use_tf32=0 (session.run on numpy arrays, the way the runtime uses it). Needs onnxruntime-gpu.

    python bench/ort_gpu.py --model slab_deit_tiny_patch16_224 --out runs/ort_gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def median_ms(fn, iters: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="slab_deit_tiny_patch16_224")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--out", default=None)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a pipeline check")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    if args.device == "cuda" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # the pip CUDA/cuDNN libraries torch brought along
    from slab_edge.export import export_model, prepare_model
    from slab_edge.runtime import loader as rt

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cuda = args.device == "cuda"
    prepared = prepare_model(args.model)
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    results: dict = {"model": args.model, "ort": ort.__version__, "device": device_name}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        # export on the CPU (the exporter traces with a CPU example), then move the reference to the GPU
        export_model(prepared, path, precisions=["fp32", "fp16"], parity=False)
        model = prepared.model.eval().to(args.device)
        # the CUDA EP runs fp32 GEMMs in TF32 by default: time and check both ways
        variants = {"fp32": (path, {}), "fp16": (path.with_name("model.fp16.onnx"), {})}
        if cuda:
            variants["fp32_no_tf32"] = (path, {"use_tf32": "0"})
        size = prepared.data_config["input_size"]
        for precision, (file, provider_options) in variants.items():
            sess = rt.load(file, provider=args.device, provider_options=provider_options or None)
            name = sess.inputs[0].name
            row = {"providers": sess.providers if hasattr(sess, "providers") else "cuda"}
            for batch in args.batches:
                x = np.random.default_rng(batch).standard_normal((batch, *size)).astype(np.float32)
                with torch.no_grad():
                    ref = model(torch.from_numpy(x).to(args.device)).float().cpu().numpy()
                out = next(iter(sess.run({name: x}).values())).astype(np.float32)
                row[f"bs{batch}"] = {
                    "max_abs_err": float(np.abs(out - ref).max()),
                    "max_abs_logit": float(np.abs(ref).max()),
                    "top1_agree": float((out.argmax(-1) == ref.argmax(-1)).mean()),
                    "median_ms": median_ms(lambda s=sess, feed={name: x}: s.run(feed), args.iters),
                }
            results[precision] = row
            sess.close()
        for batch in args.batches:
            xt = torch.randn(batch, *size, device=args.device)

            def torch_run(xt=xt):
                with torch.no_grad():
                    model(xt)
                if cuda:
                    torch.cuda.synchronize()

            eager = results.setdefault("torch_fp32_eager", {})
            eager[f"bs{batch}_median_ms"] = median_ms(torch_run, args.iters)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
