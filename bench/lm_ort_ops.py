#!/usr/bin/env python3
"""SLAB-LM on ONNX Runtime's recurrent contrib ops vs standard-op graphs (export-lm --ops ort vs standard).

    python bench/lm_ort_ops.py                              # the real run, on an IDLE machine (~25 min)
    python bench/lm_ort_ops.py --sizes tiny                 # tiny only (~2 min)
    python bench/lm_ort_ops.py --smoke --out /tmp/smoke     # pipeline check (~1 min): numbers mean nothing
    python bench/lm_ort_ops.py --phase time --out DIR       # re-time existing exports (torch-free)
    python bench/lm_ort_ops.py --provider cuda --threads 1  # ONNX Runtime CUDA EP (needs onnxruntime-gpu)

What it measures (issue 14, item 1; ONNX Runtime, CPUExecutionProvider by default, --threads 2, batch 1,
random weights, RMSNorm): for slab-lm tiny and 125m with gla and sla attention, the two exports of one
model, standard ops (the chunkwise form in MatMul/CumSum/...) and --ops ort (com.microsoft.LinearAttention
+ CausalConvWithState), at contexts 256, 4k and 16k:
  1. prefill tokens/s: one prefill-graph call on a random prompt of that many tokens from an empty state,
     the two graphs strictly alternating (burst 1: a call takes up to seconds, ORT's spinning threads
     after the other graph's call are noise at that scale), medians of --prefill-iters calls each;
  2. decode ms/token: decode steps from the state that prefill left (a conversation of that length),
     the two graphs interleaved in bursts (time_interleaved), medians of --iters steps each;
  3. a check that both graphs are the same model: max |logit diff| after the prompt and after one step.
Ratios are ort over standard (tokens/s) and standard over ort (ms/token): > 1 means the contrib ops win.

Two phases: `export` (torch: build, export both graphs of both variants -> exports.json) and `time`
(torch-free: ONNX Runtime -> results.json + a printed table); the default runs the export phase, then the
timing phase in a fresh interpreter that never imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from lm_decode import add_common_arguments, common_forward_args, run_phases  # the sibling benchmark

ATTENTIONS = ("gla", "sla")
OPS = ("standard", "ort")
#: the two graphs must be the same model: ORT fp32 vs ORT fp32, random weights
SAME_MODEL_TOLERANCE = 1e-3


# -- phase 1: export (torch) -------------------------------------------------------------------------------
def export_all(args, out: Path) -> dict[str, Any]:
    import torch

    from slab_edge.export.lm import export_lm
    from slab_edge.models.slab_lm import create_slab_lm

    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    exports: dict[str, Any] = {}
    for size in args.sizes:
        for attention in args.attentions:
            torch.manual_seed(0)
            model = create_slab_lm(size, attention=attention, norm="rmsnorm", **kwargs).eval()
            for ops in OPS:
                key = f"{size}_{attention}_{ops}"
                folder = out / "onnx" / key
                if not (folder / "decode.onnx").is_file():
                    t0 = time.perf_counter()
                    # random weights, no tokenizer (the 125m vocabulary is 32k): no parity check here
                    meta = {"tokenizer": "none", "size": size}
                    export_lm(model, folder, meta=meta, parity=False, ops=ops)
                    print(f"exported {key} in {time.perf_counter() - t0:.1f} s", flush=True)
                exports[key] = {"size": size, "attention": attention, "ops": ops, "folder": str(folder)}
    return exports


# -- phase 2: time (torch-free) ----------------------------------------------------------------------------
def median(times: list[float]) -> float:
    return float(np.median(times))


def time_pair(args, pair: dict[str, dict[str, Any]], contexts: list[int]) -> dict[str, Any]:
    """Prefill and decode of the standard and ort exports of one model, at every context."""
    from slab_edge.runtime.benchmark import time_interleaved
    from slab_edge.runtime.generate import parse_state_layout
    from slab_edge.runtime.loader import load

    options = {"threads": args.threads, "provider": args.provider}
    prefill = {ops: load(Path(e["folder"]) / "prefill.onnx", **options) for ops, e in pair.items()}
    decode = {ops: load(Path(e["folder"]) / "decode.onnx", **options) for ops, e in pair.items()}
    layouts = {ops: parse_state_layout(s.metadata, str(s.path)) for ops, s in decode.items()}
    vocab = int(decode["standard"].metadata["vocab_size"])
    rows: dict[str, Any] = {}
    for context in contexts:
        rng = np.random.default_rng(context)
        ids = rng.integers(0, vocab, (1, context), dtype=np.int64)
        feeds = {ops: {"input_ids": ids, **{s.input: s.zeros() for s in layouts[ops]}} for ops in OPS}
        prefill_times = time_interleaved(
            prefill, feeds, warmup=1, iters=args.prefill_iters, burst=1, switch_discard=0
        )
        after = {ops: prefill[ops].run(feeds[ops]) for ops in OPS}
        token = np.array([[int(rng.integers(0, vocab))]], dtype=np.int64)
        step_feeds = {
            ops: {"input_ids": token, **{s.input: after[ops][s.output] for s in layouts[ops]}} for ops in OPS
        }
        steps = {ops: decode[ops].run(step_feeds[ops]) for ops in OPS}
        decode_times = time_interleaved(decode, step_feeds, warmup=args.warmup, iters=args.iters)
        row = {
            ops: {
                "prefill_s": median(prefill_times[ops]),
                "prefill_tokens_per_s": context / median(prefill_times[ops]),
                "decode_ms": median(decode_times[ops]) * 1e3,
                "decode_p90_ms": float(np.percentile(decode_times[ops], 90) * 1e3),
                "state_bytes": int(sum(after[ops][s.output].nbytes for s in layouts[ops])),
            }
            for ops in OPS
        }
        row["prefill_ratio"] = row["ort"]["prefill_tokens_per_s"] / row["standard"]["prefill_tokens_per_s"]
        row["decode_ratio"] = row["standard"]["decode_ms"] / row["ort"]["decode_ms"]
        row["logits_max_abs"] = max(
            float(np.abs(after["ort"]["logits"] - after["standard"]["logits"]).max()),
            float(np.abs(steps["ort"]["logits"] - steps["standard"]["logits"]).max()),
        )
        rows[str(context)] = row
        print(f"timed {next(iter(pair.values()))['attention']} at context {context}", flush=True)
    graph_ops = {ops: decode[ops].metadata.get("ops") for ops in OPS}  # what each export says it is
    for session in (*prefill.values(), *decode.values()):
        session.close()
    return {"contexts": rows, "graph_ops": graph_ops}


def mismatches(results: dict[str, Any]) -> list[str]:
    """Models and contexts where the two graphs are not the same model (or not the two variants)."""
    bad = [
        f"{name} at {context}"
        for name, block in results["models"].items()
        for context, row in block["contexts"].items()
        if not row["logits_max_abs"] <= SAME_MODEL_TOLERANCE
    ]
    bad += [name for name, b in results["models"].items() if b["graph_ops"] != {ops: ops for ops in OPS}]
    return bad


def time_all(args, out: Path) -> dict[str, Any]:
    from slab_edge.runtime.benchmark import machine_info

    exports = json.loads((out / "exports.json").read_text())
    results: dict[str, Any] = {
        "machine": machine_info(),
        "provider": args.provider,
        "threads": args.threads,
        "iters": args.iters,
        "prefill_iters": args.prefill_iters,
        "contexts": args.contexts,
        "models": {},
    }
    for size in args.sizes:
        for attention in args.attentions:
            pair = {ops: exports[f"{size}_{attention}_{ops}"] for ops in OPS}
            results["models"][f"{size}_{attention}"] = time_pair(args, pair, args.contexts)
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        f"\n== SLAB-LM prefill and decode, ONNX Runtime {results['machine'].get('onnxruntime', '?')} "
        f"{results['provider']}, {results['threads']} threads, batch 1: standard ops vs --ops ort",
        " ".join(
            f"{h:>10}"
            for h in (
                "model",
                "context",
                "pre std",
                "pre ort",
                "ratio",
                "dec std",
                "dec ort",
                "ratio",
                "|dlogit|",
            )
        ),
        " ".join(
            f"{h:>10}" for h in ("", "tokens", "tok/s", "tok/s", "ort/std", "ms/tok", "ms/tok", "std/ort", "")
        ),
    ]
    for name, block in results["models"].items():
        for context, row in block["contexts"].items():
            std, ort = row["standard"], row["ort"]
            cells = [f"{name:>10}", f"{context:>10}"]
            cells += [f"{std['prefill_tokens_per_s']:>10.1f}", f"{ort['prefill_tokens_per_s']:>10.1f}"]
            cells += [
                f"{row['prefill_ratio']:>9.2f}x",
                f"{std['decode_ms']:>10.3f}",
                f"{ort['decode_ms']:>10.3f}",
            ]
            cells += [f"{row['decode_ratio']:>9.2f}x", f"{row['logits_max_abs']:>10.1e}"]
            lines.append(" ".join(cells))
    bad = mismatches(results)
    if bad:
        lines.append(f"MISMATCH (|dlogit| > {SAME_MODEL_TOLERANCE:.0e} or wrong graphs): {', '.join(bad)}")
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(p, "runs/bench-lm-ort-ops")
    p.add_argument("--attentions", nargs="+", default=list(ATTENTIONS), choices=ATTENTIONS)
    p.add_argument("--provider", default="cpu", help="ONNX Runtime provider: cpu | cuda")
    p.add_argument("--prefill-iters", type=int, default=5, help="timed prefill calls per graph and context")
    p.add_argument(
        "--smoke", action="store_true", help="tiny 2-layer 32-wide models, contexts 16/80, 3 iters"
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.contexts, args.iters, args.warmup, args.prefill_iters = ["tiny"], [16, 80], 3, 1, 2
        args.model_kwargs = args.model_kwargs or '{"dim": 32, "num_heads": 2, "ffn_dim": 64}'
    if min(args.contexts) < 1:
        p.error("contexts must be >= 1")
    return args


def forward_args(args) -> list[str]:
    extra = ("--provider", args.provider, "--prefill-iters", str(args.prefill_iters))
    return [*common_forward_args(args), *extra]


def main(argv=None) -> int:
    return run_phases(parse(argv), __file__, export_all, time_all, table, forward_args, failed=mismatches)


if __name__ == "__main__":
    sys.exit(main())
