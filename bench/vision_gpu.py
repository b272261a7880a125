#!/usr/bin/env python3
"""GPU throughput of SLAB vision models with the fused SLA kernel vs timm's softmax models (issue 13, item 1).

Rows (images/s; random weights, folded SLAB models; autocast in --dtypes, default bf16 then fp16; eager and
torch.compile; --modes graph adds the eager forward replayed as a CUDA graph, the GPU-bound rate):
  SLAB-DeiT-T (slab_deit_tiny_patch16_224 built at the size) vs timm deit_tiny_patch16_224 (SDPA) at
  224 (batch 256), 1024 (batch 4) and 512 (batch 32); SLAB-Swin-T vs timm swin_tiny_patch4_window7_224 at 224.
  Each group times three models interleaved in one run (runtime.benchmark.time_interleaved: bursts of 5 after
  2 untimed runs per switch, the order rotating): "slab" (the fused SLA kernel, fused_sla("auto")),
  "slab_unfused" (the same model, fused_sla("never"): the MatMul form, so the kernel's gain is visible) and
  "timm". Each run is synchronised; img/s comes from the median host time of the timed runs, and the
  CUDA-event time of every run after the warm-up is reported beside it. Ratios are printed next to the goals:
  SLAB-DeiT-T / DeiT-T img/s >= 1.0 at 224 and >= 2.0 at 1024, eager and compiled.
Kernel micro-benchmark (first, ~1 min): the SLA core alone at the models' shapes, [B, N, H, D] bf16: the fused
  operator, the MatMul form as the unfused layer runs it (sla_core_channels_first, fp32) and SDPA (timm's
  attention core) at the same shape; each as a CUDA graph of --micro-reps calls (GPU time) and eagerly (what
  eager mode pays, launches included).
A budget guard (--budget-minutes, compile time included) skips the remaining groups, each with its reason; the
order (see plan) puts bf16 eager and the compiled goal groups first. results.json is rewritten after every
group.

    python3 bench/vision_gpu.py --out $OUT/vision_gpu              # GPU machine: ~8 min (--budget-minutes)
    python3 bench/vision_gpu.py --micro-only --out $OUT/micro       # kernel times only (~1 min)
    python3 bench/vision_gpu.py --profile --out $OUT/profile        # GPU time per kernel category (~2 min)
    python bench/vision_gpu.py --smoke --device cpu --out /tmp/vg   # pipeline check; its numbers mean nothing
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

#: (family, img size, batch); the goals' rows first (the budget guard skips from the end)
GROUPS = [("deit", 224, 256), ("deit", 1024, 4), ("deit", 512, 32), ("swin", 224, 256)]
SMOKE_GROUPS = [("deit", 32, 2), ("swin", 64, 2)]
GOALS = {("deit", 224): 1.0, ("deit", 1024): 2.0}
MODELS = {
    "deit": ("slab_deit_tiny_patch16_224", "deit_tiny_patch16_224"),
    "swin": ("slab_swin_tiny_patch4_224", "swin_tiny_patch4_window7_224"),
}
#: smoke models: one block per stage, narrow
SMOKE_KWARGS = {"deit": {"depth": 1, "embed_dim": 48}, "swin": {"depths": (1, 1, 1, 1), "embed_dim": 48}}
#: SLA core shapes (B, N, H, D) of the groups (DeiT-T's blocks, SLAB-Swin-T's stages 1-2), and the shape SDPA
#: gets for the same tokens in the timm model: global for DeiT, 7x7 windows for Swin-T
MICRO_SHAPES = {
    "deit_224_bs256": ((256, 196, 3, 64), (256, 196, 3, 64)),
    "deit_512_bs32": ((32, 1024, 3, 64), (32, 1024, 3, 64)),
    "deit_1024_bs4": ((4, 4096, 3, 64), (4, 4096, 3, 64)),
    "swin_s1_bs256": ((256, 3136, 3, 32), (256 * 64, 49, 3, 32)),
    "swin_s2_bs256": ((256, 784, 6, 32), (256 * 16, 49, 6, 32)),
}
SMOKE_MICRO_SHAPES = {"tiny": ((2, 16, 2, 8), (8, 4, 2, 8))}
#: a group needs about this long beyond its timings (model builds; compiles of three models)
GROUP_OVERHEAD_MIN = {"eager": 0.3, "graph": 0.4, "compile": 2.5}


class Timed:
    """The runtime.benchmark Session interface over a callable: run(feed) -> fn(feed), synchronised, with the
    CUDA-event (or, on a CPU, host) milliseconds of each run in `ms`."""

    def __init__(self, fn, device) -> None:
        import torch

        self.fn, self.device, self.ms = fn, device, []
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def run(self, feed):
        if not self.cuda:
            t0 = time.perf_counter()
            out = self.fn(feed)
            self.ms.append((time.perf_counter() - t0) * 1e3)
            return out
        self.start.record()
        out = self.fn(feed)
        self.end.record()
        self.end.synchronize()
        self.ms.append(self.start.elapsed_time(self.end))
        return out


def build_pair(family: str, size: int, smoke: bool, device):
    """(folded SLAB model, timm softmax model) at img_size `size`, eval, on `device`."""
    import timm

    import slab_edge
    from slab_edge.layers.reparam import reparameterize_model

    slab_name, timm_name = MODELS[family]
    kwargs = dict(SMOKE_KWARGS[family]) if smoke else {}
    if family == "deit" or smoke:
        kwargs["img_size"] = size
    slab = reparameterize_model(slab_edge.create_model(slab_name, **kwargs)).eval().to(device)
    return slab, timm.create_model(timm_name, **kwargs).eval().to(device)


def model_runner(model, fused: str, amp, mode: str, device):
    """A Timed forward in `mode`: "eager", "compile" (torch.compile) or "graph" (the eager forward captured
    once as a CUDA graph on the first call: each run copies the input into the graph's and replays it, no
    Python or launch cost: the GPU-bound rate an engine runtime sees)."""
    import torch

    from slab_edge.ops.sla_fused import fused_sla

    fn = torch.compile(model) if mode == "compile" else model

    def forward(feed):
        with torch.no_grad(), fused_sla(fused), amp:
            return fn(feed["x"])

    if mode != "graph":
        return Timed(forward, device)
    captured: dict[str, Any] = {}

    def replay(feed):
        if not captured:
            static = {"x": feed["x"].clone()}
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up off the capture (cuBLAS / cuDNN workspaces, kernel loading)
                    forward(static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = forward(static)
            captured.update(graph=graph, static=static, out=out)
        captured["static"]["x"].copy_(feed["x"])
        captured["graph"].replay()
        return captured["out"]

    return Timed(replay, device)


def group_runners(slab, softmax, amp, mode: str, device) -> dict[str, Timed]:
    """The three models a group compares, in `mode`: "slab" (the fused SLA kernel; the CPU has none, so its
    reference op runs), "slab_unfused" (the same model in the MatMul form) and "timm"."""
    fused_mode = "auto" if device.type == "cuda" else "always"
    return {
        "slab": model_runner(slab, fused_mode, amp, mode, device),
        "slab_unfused": model_runner(slab, "never", amp, mode, device),
        "timm": model_runner(softmax, "never", amp, mode, device),
    }


def autocast_for(dtype_name: str, device):
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)


def fused_kernel_launches(runner, feed) -> int:
    """slab_sla_* kernels one forward launches (torch.profiler; CUDA only)."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        runner.run(feed)
    return sum("slab_sla_" in e.name for e in prof.events())


def time_group(
    family: str, size: int, batch: int, dtype_name: str, mode: str, args, device
) -> dict[str, Any]:
    import torch

    from slab_edge.runtime.benchmark import time_interleaved

    slab, softmax = build_pair(family, size, args.smoke, device)
    runners = group_runners(slab, softmax, autocast_for(dtype_name, device), mode, device)
    gen = torch.Generator().manual_seed(0)
    feed = {"x": torch.randn(batch, 3, size, size, generator=gen).to(device)}
    t0 = time.perf_counter()
    outputs = {name: r.run(feed).float() for name, r in runners.items()}  # compiles here in compile mode
    warmup_s = time.perf_counter() - t0
    ref = outputs["slab_unfused"]
    parity = float((outputs["slab"] - ref).abs().max() / ref.abs().max())  # fused vs MatMul form, same dtype
    row: dict[str, Any] = {"family": family, "img_size": size, "batch": batch, "dtype": dtype_name,
                           "mode": mode, "warmup_s": round(warmup_s, 1),
                           "fused_vs_unfused_rel_err": parity}  # fmt: skip
    if device.type == "cuda":
        row["fused_kernels_per_forward"] = fused_kernel_launches(runners["slab"], feed)
    for r in runners.values():
        r.ms.clear()
    feeds = dict.fromkeys(runners, feed)
    host = time_interleaved(runners, feeds, warmup=args.warmup, iters=args.iters)
    for name, r in runners.items():
        median_s = statistics.median(host[name])
        row[name] = {"img_per_s": batch / median_s, "median_ms": median_s * 1e3,
                     "event_median_ms": statistics.median(r.ms[args.warmup :])}  # fmt: skip
    row["slab_vs_timm"] = row["slab"]["img_per_s"] / row["timm"]["img_per_s"]
    row["unfused_vs_timm"] = row["slab_unfused"]["img_per_s"] / row["timm"]["img_per_s"]
    row["fused_vs_unfused"] = row["slab"]["img_per_s"] / row["slab_unfused"]["img_per_s"]
    goal = GOALS.get((family, size))
    if goal is not None and not args.smoke:
        row["goal"], row["goal_met"] = goal, row["slab_vs_timm"] >= goal
    del runners, slab, softmax
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


#: kernel-name fragments -> the category a kernel's time is summed under in --profile (first match wins)
KERNEL_CATEGORIES = [
    ("slab_sla_", "sla_fused"),
    ("flash", "sdpa"),
    ("fmha", "sdpa"),
    ("attention", "sdpa"),
    ("conv", "conv"),
    ("depthwise", "conv"),
    ("gemm", "gemm"),
    ("gemv", "gemm"),
    ("cutlass", "gemm"),
    ("sm90_xmma", "gemm"),
    ("nvjet", "gemm"),
    ("layer_norm", "norm"),
    ("batch_norm", "norm"),
    ("copy", "copy/layout"),
    ("transpose", "copy/layout"),
    ("cat", "copy/layout"),
    ("reduce", "reduce"),
    ("softmax", "softmax"),
]


def kernel_category(name: str) -> str:
    low = name.lower()
    return next((cat for frag, cat in KERNEL_CATEGORIES if frag in low), "elementwise/other")


def profile_group(
    family: str, size: int, batch: int, dtype_name: str, mode: str, args, device
) -> dict[str, Any]:
    """GPU time per forward of each model in `mode` by kernel category, the top kernels, the wall time of the
    profiled forwards and the operators with the most host time (torch.profiler over --profile-iters forwards
    after a warm-up): GPU time well below wall time means the host, not the GPU, sets the pace."""
    import torch

    slab, softmax = build_pair(family, size, args.smoke, device)
    runners = group_runners(slab, softmax, autocast_for(dtype_name, device), mode, device)
    feed = {"x": torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)}
    row: dict[str, Any] = {
        "family": family,
        "img_size": size,
        "batch": batch,
        "dtype": dtype_name,
        "mode": mode,
    }
    cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    for name, runner in runners.items():
        for _ in range(3):
            runner.run(feed)
        t0 = time.perf_counter()
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(args.profile_iters):
                runner.run(feed)
        wall_us = (time.perf_counter() - t0) * 1e6 / args.profile_iters
        host_ops = sorted(
            (e for e in prof.key_averages() if e.self_cpu_time_total > 0),
            key=lambda e: -e.self_cpu_time_total,
        )[:10]
        kernels: dict[str, list[float]] = {}
        for e in prof.events():
            if cuda and e.device_type == torch.autograd.DeviceType.CUDA:
                kernels.setdefault(e.name, []).append(e.device_time)  # µs per launch
            elif not cuda and e.cpu_parent is None:  # the smoke run's CPU: top-level operators
                kernels.setdefault(e.name, []).append(e.cpu_time_total)
        per_forward = {k: sum(v) / args.profile_iters for k, v in kernels.items()}
        categories: dict[str, float] = {}
        for k, us in per_forward.items():
            categories[kernel_category(k)] = categories.get(kernel_category(k), 0.0) + us
        top = sorted(per_forward.items(), key=lambda kv: -kv[1])[:12]
        row[name] = {
            "gpu_us_per_forward": sum(per_forward.values()),
            "profiled_wall_us_per_forward": wall_us,
            "top_host_ops_self_us": [
                [e.key[:80], e.self_cpu_time_total / args.profile_iters, e.count / args.profile_iters]
                for e in host_ops
            ],
            "launches_per_forward": sum(len(v) for v in kernels.values()) / args.profile_iters,
            "by_category_us": dict(sorted(categories.items(), key=lambda kv: -kv[1])),
            "top_kernels_us": [[k[:120], us] for k, us in top],
        }
    del runners, slab, softmax
    if cuda:
        torch.cuda.empty_cache()
    return row


def micro(args, device) -> list[dict[str, Any]]:
    """The SLA core alone per shape: fused op, MatMul form, SDPA; as CUDA graphs of --micro-reps calls and
    eagerly."""
    import torch
    import torch.nn.functional as F

    from slab_edge.ops.sla import sla_core_channels_first
    from slab_edge.ops.sla_fused import linear_attention
    from slab_edge.runtime.benchmark import time_interleaved

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for label, ((b, n, h, d), sdpa_shape) in (SMOKE_MICRO_SHAPES if args.smoke else MICRO_SHAPES).items():
        gen = torch.Generator().manual_seed(0)
        q, k = (torch.randn(b, n, h, d, generator=gen).relu().to(device, dtype) for _ in range(2))
        v = torch.randn(b, n, h, d, generator=gen).to(device, dtype)
        # SDPA's layout [B', H, N', D] (timm: a permute of the qkv projection) over the same tokens
        heads_first = [t.reshape(sdpa_shape).transpose(1, 2) for t in (q, k, v)]
        variants = {
            "fused": lambda q=q, k=k, v=v: linear_attention(q, k, v),
            "matmul": lambda q=q, k=k, v=v: sla_core_channels_first(
                q.permute(0, 2, 3, 1), k.transpose(1, 2), v.permute(0, 2, 3, 1)
            ),
            "sdpa": lambda t=heads_first: F.scaled_dot_product_attention(*t),
        }
        runners = {}
        for name, fn in variants.items():
            runners[f"{name}_eager"] = Timed(lambda feed, fn=fn: fn(), device)
            if device.type == "cuda":
                runners[f"{name}_graph"] = Timed(graph_of(fn, args.micro_reps), device)
        feeds = dict.fromkeys(runners, {})
        time_interleaved(runners, feeds, warmup=args.warmup, iters=args.micro_iters)
        row: dict[str, Any] = {"shape": label, "B": b, "N": n, "H": h, "D": d, "sdpa_shape": sdpa_shape,
                               "dtype": str(dtype)}  # fmt: skip
        for name, r in runners.items():
            per_call = r.ms[args.warmup :]
            if name.endswith("_graph"):
                per_call = [ms / args.micro_reps for ms in per_call]
            row[f"{name}_us"] = statistics.median(per_call) * 1e3
        for kind in ("graph", "eager") if device.type == "cuda" else ("eager",):
            row[f"matmul_vs_fused_{kind}"] = row[f"matmul_{kind}_us"] / row[f"fused_{kind}_us"]
            row[f"sdpa_vs_fused_{kind}"] = row[f"sdpa_{kind}_us"] / row[f"fused_{kind}_us"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def graph_of(fn, reps: int):
    """A runner body replaying a CUDA graph of `reps` calls of fn (warmed up on a side stream first)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    return lambda feed: graph.replay()


def plan(groups, args) -> list[tuple[tuple[str, int, int], str, str]]:
    """(group, dtype, mode) in the order the budget guard cuts from the end: the first dtype's eager groups,
    its compiled goal groups, the other dtypes' eager groups, then every other compiled group."""

    def rank(item) -> int:
        (family, size, _), dtype, mode = item
        first = dtype == args.dtypes[0]
        if mode == "eager":
            return 0 if first else 2
        return 1 if first and (family, size) in GOALS else 3

    items = [(g, dtype, mode) for dtype in args.dtypes for mode in args.modes for g in groups]
    return sorted(items, key=rank)  # stable: GROUPS order within a rank


def table(results: dict[str, Any]) -> str:
    lines = ["family size batch dtype mode     slab img/s  unfused img/s  timm img/s  slab/timm  goal"]
    for r in results["groups"]:
        head = f"{r['family']:6s} {r['img_size']:4d} {r['batch']:5d} {r['dtype']:5s} {r['mode']:8s}"
        if "skipped" in r:
            lines.append(f"{head} skipped: {r['skipped']}")
            continue
        goal = f">= {r['goal']:.1f} {'met' if r['goal_met'] else 'MISSED'}" if "goal" in r else "-"
        rates = [r[name]["img_per_s"] for name in ("slab", "slab_unfused", "timm")]
        lines.append(
            f"{head} {rates[0]:10.0f} {rates[1]:14.0f} {rates[2]:11.0f} {r['slab_vs_timm']:10.2f}  {goal}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench-vision-gpu"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp16"], choices=["bf16", "fp16", "fp32"])
    p.add_argument(
        "--modes",
        nargs="+",
        default=["eager", "compile"],
        choices=["eager", "graph", "compile"],
        help="eager, graph (the eager forward as a CUDA graph), compile (torch.compile)",
    )
    p.add_argument("--iters", type=int, default=40, help="timed runs per model and group")
    p.add_argument(
        "--warmup", type=int, default=5, help="untimed runs per model after the first (compiling) one"
    )
    p.add_argument("--micro-iters", type=int, default=20)
    p.add_argument("--micro-reps", type=int, default=20, help="calls per CUDA graph in the micro-benchmark")
    p.add_argument("--budget-minutes", type=float, default=7.5, help="skip groups that would end after this")
    p.add_argument("--micro-only", action="store_true")
    p.add_argument("--no-micro", action="store_true")
    p.add_argument("--profile", action="store_true", help="only the GPU-time breakdown per model (eager)")
    p.add_argument("--profile-iters", type=int, default=5)
    p.add_argument(
        "--profile-only", nargs="+", metavar="FAMILY:SIZE", help="profile these groups, e.g. deit:1024"
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny models and sizes, 2 iterations (pipeline check)"
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.iters, args.warmup, args.micro_iters, args.micro_reps = 2, 1, 2, 2
        args.modes = [m for m in args.modes if m == "eager"]  # compiling on a CPU takes minutes
        args.dtypes = ["fp32"] if args.device == "cpu" else args.dtypes

    import torch

    start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda":
        from slab_edge.ops.sla_fused_cuda import register

        register()  # build / load the kernel before any timing (and before torch.compile traces)
    results: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        },  # fmt: skip
        "goals": {f"{f}@{s}": g for (f, s), g in GOALS.items()},
        "groups": [],
    }
    out = args.out / "results.json"

    def save() -> None:
        from slab_edge.io import atomic_write_json

        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, results)

    if args.profile:
        results["profiles"] = []
        for family, size, batch in SMOKE_GROUPS if args.smoke else GROUPS:
            if args.profile_only and f"{family}:{size}" not in args.profile_only:
                continue
            row = profile_group(family, size, batch, args.dtypes[0], args.modes[0], args, device)
            results["profiles"].append(row)
            save()
            print(f"profile {family} {size} bs{batch} {args.dtypes[0]} {args.modes[0]}", flush=True)
            for name in ("slab", "slab_unfused", "timm"):
                r = row[name]
                cats = ", ".join(f"{c} {us:.0f}" for c, us in r["by_category_us"].items())
                gpu, wall = r["gpu_us_per_forward"], r["profiled_wall_us_per_forward"]
                print(f"  {name:12s} GPU {gpu:7.0f} us of {wall:7.0f} us wall, "
                      f"{r['launches_per_forward']:.0f} launches: {cats}", flush=True)  # fmt: skip
                host = ", ".join(f"{k} {us:.0f}" for k, us, _ in r["top_host_ops_self_us"][:5])
                print(f"  {'':12s} host: {host}", flush=True)
        print(f"results: {out}")
        return 0
    if not args.no_micro:
        results["micro"] = micro(args, device)
        save()
    if not args.micro_only:
        for (family, size, batch), dtype, mode in plan(SMOKE_GROUPS if args.smoke else GROUPS, args):
            elapsed = (time.perf_counter() - start) / 60
            head = {"family": family, "img_size": size, "batch": batch, "dtype": dtype, "mode": mode}
            if elapsed + GROUP_OVERHEAD_MIN[mode] > args.budget_minutes and not args.smoke:
                reason = f"budget: {elapsed:.1f} of {args.budget_minutes} min used, a {mode} group needs ~"
                results["groups"].append({**head, "skipped": reason + f"{GROUP_OVERHEAD_MIN[mode]} min"})
                continue
            try:
                row = time_group(family, size, batch, dtype, mode, args, device)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                row = {**head, "skipped": "out of memory"}
            results["groups"].append(row)
            print(json.dumps(row), flush=True)
            save()
    results["elapsed_min"] = round((time.perf_counter() - start) / 60, 2)
    save()
    if not args.micro_only:
        print(table(results))
    for row in results.get("micro", []):
        kinds = [k for k in ("graph", "eager") if f"fused_{k}_us" in row]
        print(f"micro {row['shape']:16s} " + "  ".join(
            f"{k}: fused {row[f'fused_{k}_us']:.1f} us, MatMul form x{row[f'matmul_vs_fused_{k}']:.2f}, "
            f"SDPA x{row[f'sdpa_vs_fused_{k}']:.2f}" for k in kinds))  # fmt: skip
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
