"""The deployment half of `make demo`: export -> (build an engine) -> on-device inference with ONNX Runtime.

Appended to the training half (`slab_edge.train.demo.DEMO_STEPS`):

    export   the deploy checkpoint to ONNX in fp32, fp16-mixed and int8 QDQ (parity vs PyTorch printed)
    build    a TensorRT / TensorRT-RTX engine from the fp16 file when a builder is installed (RTX: build only)
    infer    the torch-free inference path (`slab_edge.runtime`: load, preprocess from metadata, classify)
             over the held-out digits written as PNG files -> accuracy, agreement with PyTorch, latency
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

#: held-out images are written as <index>_<label>.png so accuracy can be read back from the file names
HELDOUT_DIR = "heldout_png"


def step_export(state) -> dict[str, Any]:
    from slab_edge.export import export_model, prepare_model

    prepared = prepare_model(checkpoint=state.paths["deploy"])
    reports = export_model(
        prepared,
        state.output / "digits.onnx",
        precisions=["fp32", "fp16", "int8"],
        calibration="digits",
        calibration_count=128,
    )
    facts: dict[str, Any] = {}
    for report in reports:
        state.paths[f"onnx_{report.precision}"] = report.path
        norm_ops = sum(v for k, v in report.op_counts.items() if "Normalization" in k)
        facts[f"{report.precision}: {report.path.name}"] = (
            f"parity vs PyTorch max|diff| {report.parity_max_abs():.2e}, "
            f"{sum(report.op_counts.values())} nodes, {norm_ops} norm nodes"
        )
    return facts


def installed_builder() -> str | None:
    for module in ("tensorrt", "tensorrt_rtx"):
        if importlib.util.find_spec(module) is not None:
            return module
    return None


def step_build(state) -> dict[str, Any]:
    module = installed_builder()
    if module is None:
        return {"engine": "skipped: no tensorrt or tensorrt_rtx installed (pip install tensorrt-rtx-cu13)"}
    from slab_edge.export import BuildOptions, build_engine

    report = build_engine(state.paths["onnx_fp16"], options=BuildOptions(max_batch=32, progress=False))
    state.paths["engine"] = report.engine
    size_mb = report.engine_bytes / 1e6
    facts = {"engine": f"{report.engine} ({module}, {size_mb:.1f} MB, built in {report.seconds:.1f} s)"}
    if module == "tensorrt_rtx":
        facts["note"] = "build only: TensorRT-RTX engines run on RTX GPUs (compute 8.x/12.x), not here"
    return facts


def write_heldout_pngs(folder: Path) -> np.ndarray:
    """Write the held-out digits split as PNG files; returns their labels in file order."""
    from slab_edge.export.calibration import digits_split_images

    images, labels = digits_split_images("val")
    folder.mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        image.save(folder / f"{i:04d}_{int(label)}.png")
    return labels


def step_infer(state) -> dict[str, Any]:
    import torch

    from slab_edge.runtime.benchmark import benchmark_models
    from slab_edge.runtime.infer import classify, collect_images
    from slab_edge.runtime.loader import load
    from slab_edge.runtime.preprocess import transform_for

    folder = state.output / HELDOUT_DIR
    write_heldout_pngs(folder)
    sources = collect_images([folder])
    truth = np.array([int(Path(s.path).stem.split("_")[1]) for s in sources])
    facts: dict[str, Any] = {"held-out images": len(sources)}
    reference = None
    for precision in ("fp32", "fp16", "int8"):
        with load(state.paths[f"onnx_{precision}"], threads=2) as session:
            result = classify(session, sources, top=1, batch=32)
            if reference is None:  # the same preprocessed tensors through the folded PyTorch model
                transform = transform_for(session)
                x = torch.from_numpy(np.stack([transform(s.path) for s in sources]))
                with torch.no_grad():
                    reference = state.folded(x).argmax(-1).numpy()
        predicted = np.array([p["top_k"][0]["index"] for p in result.predictions])
        accuracy = float((predicted == truth).mean() * 100)
        agree = float((predicted == reference).mean() * 100)
        state.facts[f"acc_onnx_{precision}"] = accuracy
        facts[f"ONNX Runtime {precision}: held-out top-1"] = f"{accuracy:.2f}% (= torch on {agree:.1f}%)"
    torch_acc = float((reference == truth).mean() * 100)
    facts["PyTorch folded (same tensors): held-out top-1"] = f"{torch_acc:.2f}%"
    report = benchmark_models([state.paths["onnx_fp32"]], names=["fp32"], batch=1, warmup=20, iters=200)
    latency = report["models"][0]["latency"]
    facts["ONNX Runtime fp32 latency, batch 1, 2 threads"] = (
        f"p50 {latency['p50_ms']:.3f} ms, p90 {latency['p90_ms']:.3f} ms, "
        f"peak RSS {report['peak_rss_mb']:.0f} MB"
    )
    return facts


DEPLOY_STEPS = [("export", step_export), ("build", step_build), ("infer", step_infer)]
