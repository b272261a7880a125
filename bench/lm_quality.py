#!/usr/bin/env python3
"""Validation bits per byte of tiny SLAB-LMs trained for the same wall-clock budget on the default corpus.

    python bench/lm_quality.py --budget-seconds 600                 # 10 variants x 10 min, on an IDLE machine
    python bench/lm_quality.py --budget-seconds 120 --variants gla:prepbn gla/LLLS:prepbn
    python bench/lm_quality.py --smoke --out /tmp/lmq               # pipeline check; numbers mean nothing

Variants: ATTENTION[/PATTERN]:NORM. attention sla | gla | softmax x norm rmsnorm | prepbn, and the 3:1
hybrids sla/LLLS and gla/LLLS (attention_pattern: L = the linear attention, S = softmax) x both norms
(default: all ten). slab-lm "tiny" widths with --num-layers blocks (default 4, so that a 3:1 pattern fits;
every row has the same depth; the table in bench/README.md from before hybrids was at 2), byte tokens, the
Python standard library's sources (train/validation split by file, slab_edge.data.text).
Equal budget, not equal steps: each variant first times --calibration-steps steps, then trains
floor(budget / seconds-per-step) steps (so its lr cosine and PRepBN schedule fit the run), with the budget
(+10 %) also as a hard stop. Only optimizer steps count towards the budget (evaluation does not).
Validation: loss and bits per byte (bpb = loss * tokens / bytes / ln 2) on the first --final-eval-tokens
tokens of the held-out files (all of them with 0). Variants run one after the other in rotating order;
the load average before and after each is recorded: run it on an idle machine.
Writes <out>/results.json, a table, and every variant's run folder (metrics.jsonl, metrics.png) under <out>.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

DEFAULT_VARIANTS = [
    f"{a}:{n}" for a in ("sla", "gla", "softmax", "sla/LLLS", "gla/LLLS") for n in ("rmsnorm", "prepbn")
]


def parse_variant(variant: str) -> tuple[str, str | None, str]:
    """Split "attention[/pattern]:norm" into (attention, pattern or None, norm); ValueError if malformed."""
    mixer, sep, norm = variant.partition(":")
    attention, slash, pattern = mixer.partition("/")
    if not sep or ":" in norm or not attention or not norm or (slash and not pattern):
        raise ValueError(
            f"variant {variant!r}: expected attention[/pattern]:norm, e.g. gla:prepbn or sla/LLLS:prepbn"
        )
    return attention, pattern or None, norm


def model_kwargs(args) -> dict:
    return {"num_layers": args.num_layers, **(json.loads(args.model_kwargs) if args.model_kwargs else {})}


def train_variant(variant: str, args, out: Path, steps: int, max_seconds: float | None, tag: str) -> dict:
    from slab_edge.train.lm import LMTrainConfig, train_lm

    attention, pattern, norm = parse_variant(variant)
    folder = out / f"{variant.replace('/', '-').replace(':', '-')}{tag}"  # e.g. sla-LLLS-prepbn
    if folder.exists():
        shutil.rmtree(folder)
    cfg = LMTrainConfig(
        model="tiny",
        attention=attention,
        attention_pattern=pattern,
        norm=norm,
        model_kwargs=model_kwargs(args),
        corpus=args.corpus,
        max_corpus_bytes=args.max_corpus_bytes,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        steps=steps,
        max_seconds=max_seconds,
        eval_every=max(steps, 1),
        checkpoint_every=max(steps, 1),
        log_every=max(steps // 50, 1),
        final_eval_tokens=args.final_eval_tokens or None,
        output=str(folder),
        progress=False,
        threads=args.threads,
        seed=args.seed,
        device=args.device,
    )
    summary = train_lm(cfg)
    summary["run"] = str(folder)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--budget-seconds", type=float, default=300.0, help="training time per variant")
    p.add_argument(
        "--variants",
        nargs="+",
        default=DEFAULT_VARIANTS,
        help="attention[/pattern]:norm, e.g. sla/LLLS:prepbn",
    )
    p.add_argument("--num-layers", type=int, default=4, help="blocks of every variant (default 4)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-lm-quality"))
    p.add_argument("--corpus", default="stdlib")
    p.add_argument("--max-corpus-bytes", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--final-eval-tokens", type=int, default=524_288, help="0 = the whole validation split")
    p.add_argument("--calibration-steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-kwargs", default=None, help="JSON SLAB-LM config overrides")
    p.add_argument("--smoke", action="store_true", help="2 variants, 2 s each, small corpus and model")
    args = p.parse_args(argv)
    if args.smoke:
        args.budget_seconds, args.calibration_steps, args.num_layers = 2.0, 2, 2
        args.variants = (
            args.variants if args.variants != DEFAULT_VARIANTS else ["sla:rmsnorm", "gla/LS:prepbn"]
        )
        args.max_corpus_bytes, args.seq_len, args.batch_size, args.final_eval_tokens = 150_000, 32, 2, 2048
        args.model_kwargs = args.model_kwargs or '{"dim": 32, "num_heads": 2, "ffn_dim": 64}'
    from slab_edge.errors import InputError
    from slab_edge.models.slab_lm import slab_lm_config

    for v in args.variants:  # every variant checked before the first one trains
        try:
            attention, pattern, norm = parse_variant(v)
            slab_lm_config(
                "tiny", attention=attention, attention_pattern=pattern, norm=norm, **model_kwargs(args)
            )
        except (ValueError, InputError) as err:
            p.error(f"variant {v!r}: {err}" if isinstance(err, InputError) else str(err))
    args.out.mkdir(parents=True, exist_ok=True)

    rows = []
    for i in range(len(args.variants)):
        variant = args.variants[i]
        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        cal = train_variant(variant, args, args.out, args.calibration_steps, None, "-calibration")
        shutil.rmtree(cal["run"], ignore_errors=True)
        per_step = cal["trained_seconds"] / max(cal["steps"], 1)
        steps = max(int(args.budget_seconds / per_step), 1)
        t0 = time.perf_counter()
        summary = train_variant(variant, args, args.out, steps, args.budget_seconds * 1.1, "")
        row = {
            "variant": variant,
            "steps": summary["steps"],
            "planned_steps": steps,
            "stopped_by": summary["stopped_by"],
            "tokens_seen": summary["tokens_seen"],
            "trained_seconds": summary["trained_seconds"],
            "tokens_per_second": summary["tokens_per_second"],
            "val_loss": summary["val_loss"],
            "val_bpb": summary["val_bpb"],
            "val_tokens": summary["val_tokens"],
            "params": summary["params"],
            "wall_seconds": time.perf_counter() - t0,
            "load_before": load_before,
            "load_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "run": summary["run"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    results = {
        "budget_seconds": args.budget_seconds,
        "corpus": args.corpus,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "model_kwargs": model_kwargs(args),
        "threads": args.threads,
        "rows": rows,
    }
    from slab_edge.io import atomic_write_json

    atomic_write_json(args.out / "results.json", results)
    layers = results["model_kwargs"]["num_layers"]
    print(
        f"\nslab-lm tiny ({layers} layers), {args.budget_seconds:.0f} s of training each, "
        f"validation on {args.corpus}"
    )
    print(f"{'variant':>16} {'steps':>7} {'tokens':>10} {'tok/s':>8} {'val loss':>9} {'val bpb':>8}")
    for r in sorted(rows, key=lambda r: r["val_bpb"]):
        print(
            f"{r['variant']:>16} {r['steps']:>7} {r['tokens_seen']:>10,} {r['tokens_per_second']:>8.0f} "
            f"{r['val_loss']:>9.4f} {r['val_bpb']:>8.4f}"
        )
    print(f"results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
