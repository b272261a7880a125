#!/usr/bin/env python3
"""Vision benchmark suite (issue 4, item 8): SLAB-DeiT-T vs DeiT-T on ONNX Runtime CPU, in one run.

    python bench/vision_suite.py                          # the real run: on an IDLE machine (make bench)
    python bench/vision_suite.py --smoke                  # a ~2-minute check that the pipeline works
    python bench/vision_suite.py --phase time --out DIR   # re-time existing exports (no torch needed)

What it measures (ONNX Runtime, CPUExecutionProvider, --threads 2, batch 1 unless stated):
  1. slab_deit_tiny_patch16_224 (folded) vs timm deit_tiny_patch16_224 (softmax + LayerNorm), both built
     with img_size = 224, 384, 512, 1024 and exported by the same path (slab_edge.export) -> latency
     ratio per resolution (A/B interleaved in bursts, see time_interleaved), PNG plot of latency vs
     resolution; 1024 uses fewer iterations.
  2. deit_tiny_prepbn_patch16_224 folded vs deit_tiny_patch16_224 at 224 (what folding PRepBN buys).
  3. achieved GFLOP/s of slab_deit_tiny (and deit_tiny) at batch 8, 224: FLOPs counted at export time with
     torch.utils.flop_counter.FlopCounterMode, divided by the median latency; against this machine's fp32
     GEMM rate (ONNX Runtime MatMul 1024^3 on the same threads, measured in the same run, before and after
     the model timings; numpy's rate is reported too).
  4. (issue 13) slab_deit_tiny exported with --custom-ops ort (fused SlabLinearAttention nodes run by the
     slab custom-op library, `slab-edge build-ops ort`) vs its standard-op export vs deit_tiny, the three
     interleaved, at 224 / 512 / 1024: the ratio SLAB-custom / DeiT against the goals of 1., and GFLOP/s at
     batch 8, 224 against the GEMM rate. The row records the library it ran (null: the library was not
     built and ONNX Runtime ran the file's function body instead).
Goals from the issue are printed next to the results. Weights are random: latency does not depend on them.

Two phases: `export` (torch: build, fold, export, count FLOPs -> exports.json) and `time` (torch-free:
ONNX Runtime timings -> results.json + latency_vs_resolution.png). The default runs both, the timing phase in
a child process that never imports torch (no idle torch thread pool beside the timed sessions).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SLAB = "slab_deit_tiny_patch16_224"
DEIT = "deit_tiny_patch16_224"
PREPBN = "deit_tiny_prepbn_patch16_224"
SIZES = (224, 384, 512, 1024)
#: resolutions of the custom-op row (issue 13)
CUSTOM_OP_SIZES = (224, 512, 1024)

#: issue 4 item 8: latency-ratio goals, and the multiply-add ratios the issue quotes for context
LATENCY_GOALS = {224: 0.85, 512: 0.50, 1024: 0.22}
QUOTED_MAC_RATIOS = {224: 0.87, 512: 0.53, 1024: 0.23}
PREPBN_GOAL = 0.90
GEMM_FRACTION_GOAL = 0.80
GEMM_N = 1024


# -- phase 1: export (torch) -------------------------------------------------------------------------------
def count_flops(model, input_size: tuple[int, int, int], batch: int) -> int:
    """FLOPs of one forward (FlopCounterMode: 2 per multiply-add of matmuls/convs; elementwise ops excluded).

    timm's fused scaled_dot_product_attention is switched to its explicit matmul path while counting, so the
    softmax attention's two matmuls are counted the same way as SLA's.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    fused = [m for m in model.modules() if hasattr(m, "fused_attn")]
    saved = [m.fused_attn for m in fused]
    for m in fused:
        m.fused_attn = False
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.randn(batch, *input_size))
        return int(counter.get_total_flops())
    finally:
        for m, value in zip(fused, saved):
            m.fused_attn = value


def export_one(
    name: str,
    size: int,
    out: Path,
    depth: int | None,
    parity: bool,
    log,
    opset: int = 18,
    custom_ops: str = "none",
) -> dict[str, Any]:
    """Build `name` at img_size=size (folded), export it to ONNX, count its FLOPs at batch 1 and 8.

    custom_ops "ort": the SLA cores as fused nodes (the FLOPs are counted on the same maths, unfused)."""
    import torch

    kwargs: dict[str, Any] = {"img_size": size}
    if depth is not None:
        kwargs["depth"] = depth
    suffix = ("" if depth is None else f"_d{depth}") + ("" if opset == 18 else f"_op{opset}")
    suffix += "" if custom_ops == "none" else f"_{custom_ops}"
    path = out / "onnx" / f"{name}_{size}{suffix}.onnx"
    try:
        from slab_edge.export.checkpoint import prepare_model
        from slab_edge.export.onnx_export import export_model

        via = "slab_edge.export (prepare_model + export_model)"
    except ImportError:  # export package not installed: plain torch.onnx.export, same for every model
        if custom_ops != "none":
            raise
        prepare_model = export_model = None
        via = "torch.onnx.export (dynamo) fallback"
    t0 = time.perf_counter()
    if prepare_model is not None:
        prepared = prepare_model(name, model_kwargs=kwargs, fold=True)
        model, folded, input_size = prepared.model, prepared.folded, tuple(prepared.data_config["input_size"])
        if not path.exists():
            export_model(prepared, path, opset=opset, parity=parity, custom_ops=custom_ops, log=log)
    else:
        import timm

        import slab_edge  # noqa: F401  (registers the zoo)
        from slab_edge.layers.reparam import reparameterize_model

        model = reparameterize_model(timm.create_model(name, **kwargs), check=name != DEIT).eval()
        folded, input_size = name != DEIT, (3, size, size)
        if not path.exists():
            from slab_edge.io import atomic_path

            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                program = torch.onnx.export(
                    model, (torch.randn(1, *input_size),), dynamo=True, input_names=["input"],
                    output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
                )  # fmt: skip
                program.save(str(tmp))
    seconds = time.perf_counter() - t0
    entry = {
        "model": name,
        "img_size": size,
        "custom_ops": custom_ops,
        "depth": depth,
        "path": str(path),
        "folded": bool(folded),
        "export_via": via,
        "export_s": round(seconds, 1),
        "flops_bs1": count_flops(model, input_size, 1),
        "flops_bs8": count_flops(model, input_size, 8) if size == 224 else None,
    }
    log(f"  {name} @ {size}: {entry['flops_bs1'] / 1e9:.2f} GFLOP (bs 1), {path.name}, {seconds:.0f} s")
    return entry


def phase_export(args: argparse.Namespace) -> Path:
    import torch

    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    custom_sizes = [s for s in args.sizes if s in CUSTOM_OP_SIZES] if args.custom_ops else []
    print(f"[export] {len(args.sizes) * 2 + 1 + len(custom_sizes)} models into {out / 'onnx'}", flush=True)
    entries = []

    def say(message: str) -> None:
        print(message, flush=True)

    for size in args.sizes:
        for name in (SLAB, DEIT):
            entries.append(export_one(name, size, out, args.depth, args.parity, say, args.opset))
    entries.append(export_one(PREPBN, 224, out, args.depth, args.parity, say, args.opset))
    for size in custom_sizes:
        entries.append(export_one(SLAB, size, out, args.depth, args.parity, say, args.opset, "ort"))
    manifest = out / "exports.json"
    from slab_edge.io import atomic_write_json

    atomic_write_json(manifest, {"torch": torch.__version__, "exports": entries})
    return manifest


# -- phase 2: timing (torch-free) ---------------------------------------------------------------------------
def gemm_rates(threads: int, iters: int) -> dict[str, float]:
    """fp32 GEMM GFLOP/s (N = 1024): ONNX Runtime MatMul on `threads` threads and numpy (its BLAS threads)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a = rng.standard_normal((GEMM_N, GEMM_N), dtype=np.float32)
    b = rng.standard_normal((GEMM_N, GEMM_N), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [GEMM_N, GEMM_N])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [GEMM_N, GEMM_N])],
        initializer=[numpy_helper.from_array(b, "b")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    flops = 2.0 * GEMM_N**3

    def best_rate(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return flops / float(np.median(times)) / 1e9

    return {
        "onnxruntime_gflops": round(best_rate(lambda: session.run(None, {"a": a})), 1),
        "numpy_gflops": round(best_rate(lambda: a @ b), 1),
    }


def export_key(entry: dict[str, Any]) -> tuple[str, int]:
    """(model, img_size) of an export; a custom-op export's model reads `<model>[<custom_ops>]`."""
    variant = entry.get("custom_ops", "none")
    return (entry["model"] if variant == "none" else f"{entry['model']}[{variant}]", entry["img_size"])


def phase_time(args: argparse.Namespace) -> dict[str, Any]:
    from slab_edge.io import atomic_write_json
    from slab_edge.runtime.benchmark import (
        BURST,
        SWITCH_DISCARD,
        LatencyStats,
        machine_info,
        peak_rss_mb,
        time_interleaved,
    )
    from slab_edge.runtime.loader import load

    out = Path(args.out)
    manifest = json.loads((out / "exports.json").read_text())
    exports = {export_key(e): e for e in manifest["exports"]}
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        print(f"WARNING: load average {load_before[0]:.1f}: other work is running; the timings will be "
              "unreliable (ratios less so: they are interleaved)", flush=True)  # fmt: skip

    def interleaved(keys: dict[str, tuple[str, int]], batch, iters, warmup) -> dict[str, dict[str, Any]]:
        """{label: latency stats + the model and custom-op library it ran} of sessions timed in turns."""
        sessions = {label: load(exports[key]["path"], threads=args.threads) for label, key in keys.items()}
        try:
            rng = np.random.default_rng(0)
            feeds = {}
            for key, session in sessions.items():
                c, h, w = session.metadata.get("input_size") or session.input.shape[1:]
                feeds[key] = {session.input.name: rng.standard_normal((batch, c, h, w)).astype(np.float32)}
            times = time_interleaved(sessions, feeds, warmup=warmup, iters=iters)
            libraries = {label: getattr(s, "custom_op_library", None) for label, s in sessions.items()}
        finally:
            for session in sessions.values():
                session.close()
        return {
            label: {
                "model": key[0],
                **LatencyStats.from_seconds(times[label], batch).to_json(),
                "custom_op_library": None if libraries[label] is None else str(libraries[label]),
            }
            for label, key in keys.items()
        }

    def pair(a_key, b_key, batch, iters, warmup) -> dict[str, Any]:
        r = interleaved({"A": a_key, "B": b_key}, batch, iters, warmup)
        a, b = r["A"], r["B"]
        ratios = {"ratio_p50": a["p50_ms"] / b["p50_ms"], "ratio_mean": a["mean_ms"] / b["mean_ms"]}
        return {"A": a, "B": b, **ratios}

    results: dict[str, Any] = {"machine": machine_info(), "threads": args.threads, "provider": "cpu"}
    print(f"[time] ONNX Runtime CPU, {args.threads} threads; GEMM {GEMM_N}^3 first", flush=True)
    gemm_before = gemm_rates(args.threads, args.gemm_iters)
    resolution = []
    for size in args.sizes:
        iters = args.iters_1024 if size >= 1024 else args.iters
        r = pair((SLAB, size), (DEIT, size), 1, iters, args.warmup)
        mac_ratio = exports[(SLAB, size)]["flops_bs1"] / exports[(DEIT, size)]["flops_bs1"]
        goal = LATENCY_GOALS.get(size)
        row = {"img_size": size, "iters": iters, "slab": r["A"], "deit": r["B"],
               "latency_ratio_p50": round(r["ratio_p50"], 4), "latency_ratio_mean": round(r["ratio_mean"], 4),
               "flop_ratio": round(mac_ratio, 4), "quoted_mac_ratio": QUOTED_MAC_RATIOS.get(size),
               "goal": goal, "goal_met": None if goal is None else r["ratio_p50"] <= goal}  # fmt: skip
        resolution.append(row)
        print(f"  {size:>5}: SLAB {r['A']['p50_ms']:9.2f} ms  DeiT {r['B']['p50_ms']:9.2f} ms  "
              f"ratio {r['ratio_p50']:.3f} (FLOP ratio {mac_ratio:.3f})", flush=True)  # fmt: skip
    results["resolution"] = resolution

    if (PREPBN, 224) in exports and (DEIT, 224) in exports:
        r = pair((PREPBN, 224), (DEIT, 224), 1, args.iters, args.warmup)
        results["prepbn_vs_layernorm_224"] = {
            "prepbn_folded": r["A"], "deit": r["B"], "latency_ratio_p50": round(r["ratio_p50"], 4),
            "goal": PREPBN_GOAL, "goal_met": r["ratio_p50"] <= PREPBN_GOAL,
        }  # fmt: skip
        print(f"  PRepBN folded / LayerNorm @224: {r['ratio_p50']:.3f}", flush=True)

    if (SLAB, 224) in exports and exports[(SLAB, 224)]["flops_bs8"]:
        r = pair((SLAB, 224), (DEIT, 224), 8, args.iters_bs8, args.warmup)
        gemm_after = gemm_rates(args.threads, args.gemm_iters)
        ceiling = max(gemm_before["onnxruntime_gflops"], gemm_after["onnxruntime_gflops"])
        slab_gflops = exports[(SLAB, 224)]["flops_bs8"] / (r["A"]["p50_ms"] / 1e3) / 1e9
        deit_gflops = exports[(DEIT, 224)]["flops_bs8"] / (r["B"]["p50_ms"] / 1e3) / 1e9
        results["gflops_bs8_224"] = {
            "slab": {"latency_ms": r["A"]["p50_ms"], "gflops": round(slab_gflops, 1),
                     "fraction_of_gemm": round(slab_gflops / ceiling, 3)},
            "deit": {"latency_ms": r["B"]["p50_ms"], "gflops": round(deit_gflops, 1),
                     "fraction_of_gemm": round(deit_gflops / ceiling, 3)},
            "gemm_before": gemm_before, "gemm_after": gemm_after, "gemm_ceiling_gflops": ceiling,
            "goal_fraction": GEMM_FRACTION_GOAL, "goal_met": slab_gflops / ceiling >= GEMM_FRACTION_GOAL,
        }  # fmt: skip
    custom = custom_op_rows(args, exports, interleaved, gemm_before)
    if custom:
        results["custom_ops"] = custom
    results["load_average_before"] = [round(x, 2) for x in load_before]
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    results["peak_rss_mb"] = round(peak_rss_mb(), 1)
    results["exports"] = manifest["exports"]
    results["config"] = {k: v for k, v in vars(args).items() if k not in ("phase",)}
    results["config"]["interleave"] = {"burst": BURST, "switch_discard": SWITCH_DISCARD}
    atomic_write_json(out / "results.json", results)
    plot(results, out / "latency_vs_resolution.png")
    print(format_results(results))
    print(f"wrote {out / 'results.json'} and {out / 'latency_vs_resolution.png'}")
    return results


def custom_op_rows(args, exports, interleaved, gemm_before) -> dict[str, Any] | None:
    """Item 4: SLAB-DeiT-T with fused custom ops vs its standard export vs DeiT-T, interleaved per size."""
    custom = f"{SLAB}[ort]"
    sizes = [s for s in args.sizes if all(key in exports for key in ((custom, s), (SLAB, s), (DEIT, s)))]
    if not sizes:
        return None
    print(f"[time] custom-op export ({custom}) vs standard export vs DeiT-T", flush=True)
    rows = []
    for size in sizes:
        iters = args.iters_1024 if size >= 1024 else args.iters
        keys = {"custom": (custom, size), "standard": (SLAB, size), "deit": (DEIT, size)}
        r = interleaved(keys, 1, iters, args.warmup)
        ratio = r["custom"]["p50_ms"] / r["deit"]["p50_ms"]
        goal = LATENCY_GOALS.get(size)
        rows.append({"img_size": size, "iters": iters, **r,
                     "custom_vs_deit_p50": round(ratio, 4),
                     "custom_vs_standard_p50": round(r["custom"]["p50_ms"] / r["standard"]["p50_ms"], 4),
                     "goal": goal, "goal_met": None if goal is None else ratio <= goal})  # fmt: skip
        print(f"  {size:>5}: custom {r['custom']['p50_ms']:9.2f} ms  standard "
              f"{r['standard']['p50_ms']:9.2f} ms  DeiT {r['deit']['p50_ms']:9.2f} ms  "
              f"custom/DeiT {ratio:.3f}", flush=True)  # fmt: skip
    out: dict[str, Any] = {"resolution": rows}
    if 224 in sizes and exports[(SLAB, 224)]["flops_bs8"]:
        keys = {"custom": (custom, 224), "standard": (SLAB, 224)}
        r = interleaved(keys, 8, args.iters_bs8, args.warmup)
        gemm_after = gemm_rates(args.threads, args.gemm_iters)
        ceiling = max(gemm_before["onnxruntime_gflops"], gemm_after["onnxruntime_gflops"])
        flops = exports[(SLAB, 224)]["flops_bs8"]  # the same maths, counted unfused
        gflops = {label: flops / (r[label]["p50_ms"] / 1e3) / 1e9 for label in keys}
        out["gflops_bs8_224"] = {
            **{label: {"latency_ms": r[label]["p50_ms"], "gflops": round(gflops[label], 1),
                       "fraction_of_gemm": round(gflops[label] / ceiling, 3),
                       "custom_op_library": r[label]["custom_op_library"]} for label in keys},
            "gemm_after": gemm_after, "gemm_ceiling_gflops": ceiling, "goal_fraction": GEMM_FRACTION_GOAL,
            "goal_met": gflops["custom"] / ceiling >= GEMM_FRACTION_GOAL,
        }  # fmt: skip
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    """Latency vs resolution (log scale) for both models, with the SLAB/DeiT ratio against its goals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from slab_edge.io import atomic_path

    rows = results["resolution"]
    sizes = [r["img_size"] for r in rows]
    fig, (ax, ax_ratio) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax.plot(sizes, [r["deit"]["p50_ms"] for r in rows], "o-", label="DeiT-T (softmax + LayerNorm)")
    ax.plot(sizes, [r["slab"]["p50_ms"] for r in rows], "s-", label="SLAB-DeiT-T (SLA, folded PRepBN)")
    ax.set_xlabel("input resolution (px)")
    ax.set_ylabel("median latency, batch 1 (ms)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(sizes)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(f"ONNX Runtime CPU, {results['threads']} threads")
    ax_ratio.plot(sizes, [r["latency_ratio_p50"] for r in rows], "s-", label="latency ratio SLAB / DeiT")
    ax_ratio.plot(sizes, [r["flop_ratio"] for r in rows], "--", color="gray", label="FLOP ratio (counted)")
    goals = [(s, g) for s, g in LATENCY_GOALS.items() if s in sizes]
    if goals:
        ax_ratio.plot(*zip(*goals), "v", color="red", label="goal (issue 4)")
    ax_ratio.set_xlabel("input resolution (px)")
    ax_ratio.set_ylabel("ratio")
    ax_ratio.set_xticks(sizes)
    ax_ratio.set_ylim(0, max(1.1, max(r["latency_ratio_p50"] for r in rows) * 1.1))
    ax_ratio.grid(True, alpha=0.3)
    ax_ratio.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def format_results(results: dict[str, Any]) -> str:
    header = f"{'size':>6} {'SLAB ms':>10} {'DeiT ms':>10} {'ratio':>7} {'FLOP ratio':>11} {'goal':>6}  met"
    title = "SLAB-DeiT-T / DeiT-T latency (ONNX Runtime CPU, batch 1, median, A/B interleaved in bursts)"
    lines = ["", title, header]
    for r in results["resolution"]:
        goal = f"{r['goal']:.2f}" if r["goal"] is not None else "-"
        met = "-" if r["goal_met"] is None else ("yes" if r["goal_met"] else "NO")
        lines.append(f"{r['img_size']:>6} {r['slab']['p50_ms']:>10.2f} {r['deit']['p50_ms']:>10.2f} "
                     f"{r['latency_ratio_p50']:>7.3f} {r['flop_ratio']:>11.3f} {goal:>6}  {met}")  # fmt: skip
    lines.append("  (issue's multiply-add ratios: 0.87 @224, 0.53 @512, 0.23 @1024)")
    p = results.get("prepbn_vs_layernorm_224")
    if p:
        lines.append(f"PRepBN folded / LayerNorm DeiT-T @224: {p['latency_ratio_p50']:.3f} "
                     f"(goal <= {p['goal']:.2f}: {'yes' if p['goal_met'] else 'NO'})")  # fmt: skip
    g = results.get("gflops_bs8_224")
    if g:
        lines.append(
            f"batch 8 @224: SLAB {g['slab']['gflops']:.1f} GFLOP/s = {g['slab']['fraction_of_gemm']:.0%} of "
            "the "
            f"{g['gemm_ceiling_gflops']:.1f} GFLOP/s GEMM rate (goal >= {g['goal_fraction']:.0%}: "
            f"{'yes' if g['goal_met'] else 'NO'}); DeiT {g['deit']['gflops']:.1f} GFLOP/s = "
            f"{g['deit']['fraction_of_gemm']:.0%} (issue: 86% on an idle machine)"
        )
        lines.append(f"  GEMM ORT/numpy before {g['gemm_before']}, after {g['gemm_after']}")
    c = results.get("custom_ops")
    if c:
        library = c["resolution"][0]["custom"]["custom_op_library"]
        ran = library or "library NOT built: the function body ran"
        lines.append(f"SLAB-DeiT-T with fused custom ops ({ran}):")
        lines.append(f"{'size':>6} {'custom ms':>10} {'standard':>10} {'DeiT ms':>10} {'custom/DeiT':>12} "
                     f"{'custom/std':>11} {'goal':>6}  met")  # fmt: skip
        for r in c["resolution"]:
            goal = f"{r['goal']:.2f}" if r["goal"] is not None else "-"
            met = "-" if r["goal_met"] is None else ("yes" if r["goal_met"] else "NO")
            lines.append(f"{r['img_size']:>6} {r['custom']['p50_ms']:>10.2f} "
                         f"{r['standard']['p50_ms']:>10.2f} {r['deit']['p50_ms']:>10.2f} "
                         f"{r['custom_vs_deit_p50']:>12.3f} "
                         f"{r['custom_vs_standard_p50']:>11.3f} {goal:>6}  {met}")  # fmt: skip
        g = c.get("gflops_bs8_224")
        if g:
            lines.append(
                f"  batch 8 @224: custom {g['custom']['gflops']:.1f} GFLOP/s = "
                f"{g['custom']['fraction_of_gemm']:.0%} of {g['gemm_ceiling_gflops']:.1f} (goal >= "
                f"{g['goal_fraction']:.0%}: {'yes' if g['goal_met'] else 'NO'}); standard "
                f"{g['standard']['gflops']:.1f} GFLOP/s = {g['standard']['fraction_of_gemm']:.0%}"
            )
    lines.append(
        f"load average before {results['load_average_before']}, after {results['load_average_after']}"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--out", default="runs/bench-vision", help="output folder (ONNX files, JSON, PNG)")
    parser.add_argument("--phase", choices=["all", "export", "time"], default="all")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--opset",
        type=int,
        default=18,
        help="ONNX opset of every export (20: native Gelu, faster on ONNX Runtime)",
    )
    parser.add_argument("--iters", type=int, default=100, help="timed iterations per model (batch 1)")
    parser.add_argument("--iters-1024", type=int, default=15, help="timed iterations at 1024 and above")
    parser.add_argument("--iters-bs8", type=int, default=30, help="timed iterations at batch 8")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--gemm-iters", type=int, default=20)
    parser.add_argument("--depth", type=int, default=None, help="reduced depth for every model (smoke tests)")
    parser.add_argument("--no-parity", dest="parity", action="store_false", help="skip export parity checks")
    parser.add_argument("--no-custom-ops", dest="custom_ops", action="store_false",
                        help="skip item 4 (SLAB-DeiT-T exported with --custom-ops ort)")  # fmt: skip
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="pipeline check: depth 1, sizes 224 256, 2 iterations (meaningless)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.depth = args.depth or 1
        if args.sizes == list(SIZES):
            args.sizes = [224, 256]
        args.iters = args.iters_1024 = args.iters_bs8 = args.gemm_iters = 2
        args.warmup = 1
        args.parity = False
    if 224 not in args.sizes:
        parser.error("--sizes must include 224 (the PRepBN and batch-8 comparisons run there)")
    return args


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    if args.phase in ("all", "export"):
        phase_export(args)
    if args.phase == "export":
        return 0
    if args.phase == "all":
        # Time in a fresh interpreter that never imported torch.
        rest = [a for a in raw if a not in ("--phase", "all", "export")]
        return subprocess.call([sys.executable, __file__, *rest, "--phase", "time", "--out", args.out])
    phase_time(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
