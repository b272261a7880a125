#!/usr/bin/env python3
"""Decode latency of SLAB-LM on ONNX Runtime CPU: constant-state linear attention vs a softmax KV cache.

    python bench/lm_decode.py                              # the real run, on an IDLE machine (~15-30 min)
    python bench/lm_decode.py --sizes tiny                 # tiny only (minutes)
    python bench/lm_decode.py --smoke --out /tmp/lm-smoke  # pipeline check (~1 min); its numbers mean nothing
    python bench/lm_decode.py --phase time --out DIR       # re-time existing exports (torch-free)

What it measures (issue 5, item 6; ONNX Runtime CPUExecutionProvider, --threads 2, batch 1):
  1. per-token latency of the decode-step graph (slab-edge export-lm's decode.onnx, random weights) of
     slab-lm tiny and 125m with gla, sla and softmax attention at context 256, 4k and 16k. No prompt is run:
     the past is fed directly — a random constant-size state for gla/sla, a random KV cache of context-1
     positions for softmax. The three attentions are timed interleaved (in bursts: time_interleaved), medians.
  2. bytes: state bytes vs KV-cache bytes, and bytes read per token = weights read per token (every
     weight except the embedding table, of which one row) + state (or KV cache). The ideal speedup of
     linear attention over softmax at a context is the ratio of those; the report gives the measured
     speedup as a fraction of it (goal >= 80 % at 16k), and linear attention's 16k / 256 latency (goal
     <= 1.1x: its cost must not depend on the context), timed with both contexts interleaved in one loop.
  3. folded PRepBN vs RMSNorm decode tokens/s at context 256 (goal >= 1.1x; the paper: +14.5 % for
     LLaMA-350M), interleaved per attention.
Note: the softmax graph takes the cache as an input and returns cache+1 as an output (the standard
KV-cache ONNX export), so each step also writes the cache once; that cost is part of the measured latency.

Two phases: `export` (torch: build with random weights, fold, export the decode graph -> exports.json) and
`time` (torch-free: ONNX Runtime -> results.json + a printed table). The default runs the export phase, then
the timing phase in a fresh interpreter that never imports torch.
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

ATTENTIONS = ("gla", "sla", "softmax")
NORMS = ("rmsnorm", "prepbn")
SPEEDUP_FRACTION_GOAL = 0.80
FLAT_CONTEXT_GOAL = 1.10
PREPBN_GOAL = 1.10


# -- phase 1: export (torch) -------------------------------------------------------------------------------
def export_all(args, out: Path) -> dict[str, Any]:
    import torch

    from slab_edge.export.lm import export_lm
    from slab_edge.models.slab_lm import create_slab_lm

    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    exports: dict[str, Any] = {}
    for size in args.sizes:
        for attention in args.attentions:
            for norm in args.norms:
                key = f"{size}_{attention}_{norm}"
                folder = out / "onnx" / key
                torch.manual_seed(0)
                model = create_slab_lm(size, attention=attention, norm=norm, **kwargs).eval()
                embed = model.embed.weight
                params = sum(p.numel() for p in model.parameters())
                entry = {
                    "size": size,
                    "attention": attention,
                    "norm": norm,
                    "path": str(folder / "decode.onnx"),
                    "params": int(params),
                    "layers": model.config.num_layers,
                    "dim": model.config.dim,
                    "vocab_size": model.config.vocab_size,
                    # fp32 weights read per decode step: all but the embedding table, of which one row
                    "weight_bytes_read": int((params - embed.numel() + embed.shape[1]) * 4),
                }
                if not (folder / "decode.onnx").is_file():
                    t0 = time.perf_counter()
                    # random weights, no tokenizer (the 125m/350m vocabularies are 32k): decode graph only
                    meta = {"tokenizer": "none", "size": size}
                    export_lm(model, folder, meta=meta, parity=False, graphs=("decode",))
                    print(f"exported {key} in {time.perf_counter() - t0:.1f} s", flush=True)
                exports[key] = entry
    return exports


# -- phase 2: time (torch-free) ----------------------------------------------------------------------------
def state_feeds(session, layout: list[dict], context: int, seed: int) -> dict[str, np.ndarray]:
    """input_ids [1, 1] + a random past: constant-size state, or a KV cache of context - 1 positions."""
    rng = np.random.default_rng(seed)
    feeds = {"input_ids": np.array([[1]], dtype=np.int64)}
    for entry in layout:
        shape = [1 if d == "batch" else context - 1 if d == "past_len" else d for d in entry["shape"]]
        feeds[entry["input"]] = (0.05 * rng.standard_normal(shape)).astype(entry["dtype"])
    return feeds


def state_bytes(layout: list[dict], context: int) -> int:
    total = 0
    for entry in layout:
        n = np.dtype(entry["dtype"]).itemsize
        for d in entry["shape"]:
            n *= 1 if d == "batch" else context if d == "past_len" else d
        total += n
    return total


def median_ms(times: list[float]) -> float:
    return float(np.median(times) * 1e3)


def time_all(args, out: Path) -> dict[str, Any]:
    from slab_edge.runtime.benchmark import BURST, SWITCH_DISCARD, machine_info, time_interleaved
    from slab_edge.runtime.loader import load

    exports = json.loads((out / "exports.json").read_text())
    results: dict[str, Any] = {
        "machine": machine_info(),
        "threads": args.threads,
        "iters": args.iters,
        "interleave": {"burst": BURST, "switch_discard": SWITCH_DISCARD},
        "contexts": args.contexts,
        "decode": {},
        "norm": {},
    }
    for size in args.sizes:
        keys = {a: f"{size}_{a}_rmsnorm" for a in args.attentions if f"{size}_{a}_rmsnorm" in exports}
        sessions = {a: load(exports[k]["path"], threads=args.threads) for a, k in keys.items()}
        layouts = {a: s.metadata["state_layout"] for a, s in sessions.items()}
        rows = {}
        for context in args.contexts:
            feeds = {a: state_feeds(sessions[a], layouts[a], context, seed=context) for a in sessions}
            times = time_interleaved(sessions, feeds, warmup=args.warmup, iters=args.iters)
            row = {}
            for a in sessions:
                weights = exports[keys[a]]["weight_bytes_read"]
                sb = state_bytes(layouts[a], context - 1 if a == "softmax" else context)
                row[a] = {
                    "median_ms": median_ms(times[a]),
                    "p90_ms": float(np.percentile(times[a], 90) * 1e3),
                    "tokens_per_s": 1e3 / median_ms(times[a]),
                    "state_bytes": sb,
                    "bytes_read_per_token": weights + sb,
                }
            if "softmax" in row:
                for a in row:
                    if a == "softmax":
                        continue
                    ideal = row["softmax"]["bytes_read_per_token"] / row[a]["bytes_read_per_token"]
                    speedup = row["softmax"]["median_ms"] / row[a]["median_ms"]
                    row[a].update(ideal_speedup=ideal, speedup=speedup, fraction_of_ideal=speedup / ideal)
            rows[str(context)] = row
            del feeds
            print(f"timed {size} at context {context}", flush=True)
        lo, hi = str(min(args.contexts)), str(max(args.contexts))
        # Flatness in context: each linear-attention graph fed its state "at" the shortest and the longest
        # context, the two timed interleaved in one loop (the rows above ran minutes apart, so machine drift
        # and the softmax cache walks between them would land in the ratio).
        linear = [a for a in sessions if a != "softmax"]
        pairs = {f"{a}@{c}": (a, c) for a in linear for c in (lo, hi)}
        flat_times = time_interleaved(
            {name: sessions[a] for name, (a, _) in pairs.items()},
            {n: state_feeds(sessions[a], layouts[a], int(c), seed=int(c)) for n, (a, c) in pairs.items()},
            warmup=args.warmup,
            iters=args.iters,
        )
        flat = {a: median_ms(flat_times[f"{a}@{hi}"]) / median_ms(flat_times[f"{a}@{lo}"]) for a in linear}
        results["decode"][size] = {"contexts": rows, f"latency_{hi}_over_{lo}": flat}
        for s in sessions.values():
            s.close()
        # folded PRepBN vs RMSNorm, per attention, at the shortest context
        norm_rows = {}
        for a in args.attentions:
            pair = {n: f"{size}_{a}_{n}" for n in ("rmsnorm", "prepbn")}
            if not all(k in exports for k in pair.values()):
                continue
            ss = {n: load(exports[k]["path"], threads=args.threads) for n, k in pair.items()}
            feeds = {n: state_feeds(ss[n], ss[n].metadata["state_layout"], min(args.contexts), 0) for n in ss}
            times = time_interleaved(ss, feeds, warmup=args.warmup, iters=args.iters)
            tps = {n: 1e3 / median_ms(times[n]) for n in ss}
            norm_rows[a] = {
                "rmsnorm_tokens_per_s": tps["rmsnorm"],
                "prepbn_folded_tokens_per_s": tps["prepbn"],
                "ratio": tps["prepbn"] / tps["rmsnorm"],
            }
            for s in ss.values():
                s.close()
        results["norm"][size] = norm_rows
    return results


def table(results: dict[str, Any]) -> str:
    lines = []
    for size, block in results["decode"].items():
        lines.append(
            f"\n== slab-lm {size}: decode step, ONNX Runtime CPU, {results['threads']} threads, batch 1"
        )
        header = (
            "context",
            "attn",
            "ms/token",
            "tok/s",
            "state MB",
            "read MB",
            "speedup",
            "ideal",
            "of ideal",
        )
        lines.append(" ".join(f"{h:>9}" for h in header))
        for context, row in block["contexts"].items():
            for a, r in row.items():
                extra = ""
                if "speedup" in r:
                    extra = (
                        f"{r['speedup']:>8.2f}x {r['ideal_speedup']:>8.2f}x {r['fraction_of_ideal']:>9.0%}"
                    )
                cells = [f"{context:>9}", f"{a:>9}", f"{r['median_ms']:>9.3f}", f"{r['tokens_per_s']:>9.1f}"]
                cells += [f"{r['state_bytes'] / 1e6:>9.3f}", f"{r['bytes_read_per_token'] / 1e6:>9.2f}"]
                lines.append(" ".join(cells) + " " + extra)
        for key, flat in block.items():
            if key.startswith("latency_"):
                for a, ratio in flat.items():
                    verdict = "ok" if ratio <= FLAT_CONTEXT_GOAL else "MISSED"
                    lines.append(
                        f"{a}: {key.replace('_', ' ')} = {ratio:.3f} (goal <= {FLAT_CONTEXT_GOAL}): {verdict}"
                    )
        hi = max(block["contexts"], key=int)
        for a, r in block["contexts"][hi].items():
            if "fraction_of_ideal" in r:
                verdict = "ok" if r["fraction_of_ideal"] >= SPEEDUP_FRACTION_GOAL else "MISSED"
                lines.append(
                    f"{a} vs softmax at {hi}: {r['fraction_of_ideal']:.0%} of the ideal speedup "
                    f"(goal >= {SPEEDUP_FRACTION_GOAL:.0%}): {verdict}"
                )
        for a, r in results["norm"].get(size, {}).items():
            verdict = "ok" if r["ratio"] >= PREPBN_GOAL else "MISSED"
            lines.append(
                f"{a}: folded PRepBN {r['prepbn_folded_tokens_per_s']:.1f} vs RMSNorm "
                f"{r['rmsnorm_tokens_per_s']:.1f} tokens/s = {r['ratio']:.3f}x "
                f"(goal >= {PREPBN_GOAL}): {verdict}"
            )
    return "\n".join(lines)


def add_common_arguments(p: argparse.ArgumentParser, out: str) -> None:
    """The options of the two-phase ONNX Runtime LM benchmarks (this one and lm_ort_ops.py)."""
    p.add_argument("--out", type=Path, default=Path(out), help="output folder")
    p.add_argument("--phase", choices=("all", "export", "time"), default="all")
    p.add_argument("--sizes", nargs="+", default=["tiny", "125m"], help="slab-lm sizes (tiny 125m 350m)")
    p.add_argument("--contexts", nargs="+", type=int, default=[256, 4096, 16384])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--model-kwargs", default=None, help="JSON overrides of the SLAB-LM config (smoke tests)")


def common_forward_args(args) -> list[str]:
    """add_common_arguments' values (and --attentions) for the timing phase's command line."""
    return [
        *("--out", str(args.out), "--sizes", *args.sizes, "--attentions", *args.attentions),
        *("--contexts", *map(str, args.contexts), "--threads", str(args.threads)),
        *("--iters", str(args.iters), "--warmup", str(args.warmup)),
    ]


def parse(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(p, "runs/bench-lm-decode")
    p.add_argument("--attentions", nargs="+", default=list(ATTENTIONS))
    p.add_argument(
        "--norms", nargs="+", default=list(NORMS), help="rmsnorm prepbn (prepbn: the fold comparison)"
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny, 2-layer 32-wide models, contexts 16/64, 3 iters"
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.contexts, args.iters, args.warmup = ["tiny"], [16, 64], 3, 1
        args.model_kwargs = args.model_kwargs or '{"dim": 32, "num_heads": 2, "ffn_dim": 64}'
    if min(args.contexts) < 2:
        p.error("contexts must be >= 2")
    return args


def forward_args(args) -> list[str]:
    return [*common_forward_args(args), "--norms", *args.norms]


def run_phases(args, script: str, export_all, time_all, table, forward_args, failed=None) -> int:
    """Export (torch) and/or time (torch-free) as args.phase says; "all" times in a fresh interpreter.

    export_all(args, out) -> exports.json; time_all(args, out) -> results.json; table(results) is printed;
    failed(results) -> True makes the exit code 1.
    """
    args.out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if args.phase in ("all", "time") and load > 0.5:
        print(
            f"warning: 1-minute load average {load:.1f}: timings on a busy machine are not meaningful",
            file=sys.stderr,
        )
    if args.phase in ("all", "export"):
        from slab_edge.io import atomic_write_json

        exports = export_all(args, args.out)
        atomic_write_json(args.out / "exports.json", exports)
    if args.phase == "all":
        # time in a fresh interpreter: no idle torch thread pool beside the ONNX Runtime sessions
        cmd = [sys.executable, script, "--phase", "time", *forward_args(args)]
        return subprocess.call(cmd)
    if args.phase == "time":
        from slab_edge.io import atomic_write_json

        results = time_all(args, args.out)
        atomic_write_json(args.out / "results.json", results)
        print(table(results))
        print(f"\nresults: {args.out / 'results.json'}")
        if failed is not None and failed(results):
            return 1
    return 0


def main(argv=None) -> int:
    return run_phases(parse(argv), __file__, export_all, time_all, table, forward_args)


if __name__ == "__main__":
    sys.exit(main())
