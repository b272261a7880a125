#!/usr/bin/env python3
"""Example 05: train a tiny SLAB-LM on Python's own sources, fold it, export it, generate text on the edge.

    python examples/05_language_model/language_model.py                    # SLA + PRepBN, ~2 min on 1 core
    python examples/05_language_model/language_model.py --attention gla --steps 1500
    python examples/05_language_model/language_model.py --attention-pattern LLLS --num-layers 4   # 3:1 hybrid
    python examples/05_language_model/language_model.py --skip-training   # reuse the trained run
    python examples/05_language_model/language_model.py --skip-training --genai   # + onnxruntime-genai

1. train  slab_edge.train.lm.train_lm: byte tokens, the standard library's *.py files (split by file),
          validation loss and bits per byte (same as `slab-edge train-lm`);
2. fold   slab_edge.models.slab_lm.fold_lm: PRepBN -> affine -> folded into q/k/v, gate/up and the head;
3. export slab_edge.export.lm.export_lm: prefill.onnx (whole prompt in parallel) + decode.onnx (one token,
          explicit constant-size state), checked against PyTorch before they are written;
4. generate slab_edge.runtime.generate (torch-free, ONNX Runtime): greedy, then sampled, streamed;
5. genai  (--genai) export_lm(format="genai"): a folder onnxruntime-genai loads; its greedy text next to 4's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

OUT = Path("runs/examples/05_language_model")


def train(args, run: Path) -> None:
    from slab_edge.train.lm import LMTrainConfig, train_lm

    cfg = LMTrainConfig(
        model="tiny",
        attention=args.attention,
        attention_pattern=args.attention_pattern,
        norm=args.norm,
        model_kwargs={"num_layers": args.num_layers} if args.num_layers else {},
        steps=args.steps,
        seq_len=256,
        batch_size=16,
        eval_every=max(args.steps // 4, 1),
        final_eval_tokens=262_144,
        output=str(run),
        overwrite=True,
        threads=args.threads,
    )
    summary = train_lm(cfg)
    seconds = summary["trained_seconds"]
    print(
        f"[1 train] {summary['steps']} steps, {summary['tokens_seen']:,} tokens in {seconds:.0f} s "
        f"({summary['tokens_per_second']:,.0f} tokens/s); validation {summary['val_loss']:.3f} nats/token = "
        f"{summary['val_bpb']:.3f} bits/byte on {summary['val_tokens']:,} held-out bytes"
    )


def fold_and_export(run: Path) -> Path:
    from slab_edge.export.lm import export_lm
    from slab_edge.models.slab_lm import fold_lm
    from slab_edge.train.lm import load_lm

    model, meta, _ = load_lm(run)
    _, diff = fold_lm(model)
    norms = sum(1 for m in model.modules() if type(m).__name__ == "ProgressiveNorm")
    if diff is None:
        print("[2 fold] RMSNorm model: nothing to fold")
    else:
        print(f"[2 fold] {norms} PRepBN norms folded into their Linears; logits max|diff| {diff:.2e}")
    onnx_dir = run / "onnx"
    report = export_lm(run, onnx_dir, threads=1, save_folded=run / "model.folded.safetensors")
    for line in report.lines():
        print(f"[3 export] {line}")
    return onnx_dir


def generate(onnx_dir: Path, prompt: str, tokens: int) -> None:
    from slab_edge.runtime.generate import Sampler, open_lm

    with open_lm(onnx_dir, threads=1) as lm:
        ids = lm.tokenizer.encode(prompt)
        for title, sampler in (
            ("greedy", Sampler()),
            ("temperature 0.8, top-p 0.95, seed 0", Sampler(temperature=0.8, top_p=0.95, seed=0)),
        ):
            print(f"\n[4 generate: {title}]\n{prompt}", end="", flush=True)
            result = lm.generate(ids, tokens, sampler, on_text=lambda s: print(s, end="", flush=True))
            print(f"\n[{result.summary()}]")


def genai(run: Path, onnx_dir: Path, prompt: str, tokens: int) -> None:
    from slab_edge.export.lm import export_lm
    from slab_edge.runtime.genai import open_genai
    from slab_edge.runtime.generate import open_lm

    genai_dir = run / "genai"
    report = export_lm(run, genai_dir, threads=1, format="genai")
    for line in report.lines():
        print(f"[5 genai export] {line}")
    with open_genai(genai_dir, threads=1) as lm:
        ids = lm.tokenizer.encode(prompt)
        result = lm.generate(ids, tokens)
    with open_lm(onnx_dir, threads=1) as reference:
        expected = reference.generate(ids, tokens).tokens
    same = "the same tokens as" if result.tokens == expected[: len(result.tokens)] else "NOT the same as"
    print(f"\n[5 onnxruntime-genai: greedy, {same} step 4's greedy run]\n{prompt}{result.text}")
    print(f"[{result.summary()}]")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--attention", default="sla", choices=("sla", "gla", "softmax"))
    p.add_argument("--norm", default="prepbn", choices=("prepbn", "rmsnorm"))
    p.add_argument(
        "--attention-pattern",
        default=None,
        help="hybrid: a letter per layer, repeated over the depth (L = --attention, S = softmax), e.g. LLLS",
    )
    p.add_argument("--num-layers", type=int, default=None, help="blocks (default: the tiny config's 2)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for this tiny model)")
    p.add_argument("--prompt", default="def __init__(self")
    p.add_argument("--tokens", type=int, default=160)
    p.add_argument("--skip-training", action="store_true", help="reuse the run in --out")
    p.add_argument("--genai", action="store_true", help="also export for onnxruntime-genai and run it there")
    args = p.parse_args(argv)
    pattern = f"-{args.attention_pattern}" if args.attention_pattern else ""
    run = args.out / f"{args.attention}{pattern}-{args.norm}"
    if not args.skip_training:
        train(args, run)
    elif not (run / "model.safetensors").is_file():
        print(f"error: no trained run in {run}; run without --skip-training first", file=sys.stderr)
        return 2
    onnx_dir = fold_and_export(run)
    generate(onnx_dir, args.prompt, args.tokens)
    if args.genai:
        genai(run, onnx_dir, args.prompt, args.tokens)
    hybrid = f" --attention-pattern {args.attention_pattern}" if args.attention_pattern else ""
    if args.num_layers:
        hybrid += f' --model-kwargs "{{num_layers: {args.num_layers}}}"'
    print(
        "\nThe same with the CLI:\n"
        f"  slab-edge train-lm --attention {args.attention}{hybrid} --norm {args.norm} --steps {args.steps} "
        f"--threads {args.threads} --output {run}\n"
        f"  slab-edge export-lm {run} -o {onnx_dir}\n"
        f'  slab-edge generate {onnx_dir} --prompt "{args.prompt}" --max-new-tokens {args.tokens}'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
