"""`slab-edge export-lm`: fold a trained SLAB-LM and write its prefill + decode ONNX graphs for generation.

    slab-edge export-lm runs/lm-tiny-sla-prepbn -o runs/lm-tiny-sla-prepbn/onnx
    slab-edge generate runs/lm-tiny-sla-prepbn/onnx --prompt "def main(" --max-new-tokens 64
    slab-edge export-lm runs/lm-tiny-sla-prepbn --ops ort    # on ONNX Runtime >= 1.25.1's recurrent ops
    slab-edge export-lm runs/lm-tiny-sla-prepbn --format genai  # onnxruntime-genai folder: <run>/genai

Prints the folding parity and the ONNX Runtime vs PyTorch parity (prefill logits and state, decode-step
logits, greedy tokens through the torch-free generation loop); an export that fails them writes nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from slab_edge.commands.argtypes import int_range, non_negative_int, output_file, output_folder, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="train-lm run folder, its model.safetensors, or a checkpoint manifest")
    parser.add_argument(
        "-o",
        "--output",
        type=output_folder,
        default=None,
        help="export folder (default <run>/onnx, <run>/genai)",
    )
    parser.add_argument(
        "--format",
        choices=("slab", "genai"),
        default="slab",
        help="slab: prefill + decode graphs for slab-edge generate (default); genai: one graph, "
        "genai_config.json and tokenizer files for onnxruntime-genai",
    )
    parser.add_argument("--opset", type=int_range(17), default=18, help="ONNX opset (default 18)")
    parser.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    parser.add_argument("--no-parity", action="store_true", help="skip the ONNX Runtime vs PyTorch checks")
    parser.add_argument(
        "--parity-tokens",
        type=non_negative_int,
        default=64,
        help="greedy tokens compared with PyTorch (default 64)",
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="ONNX Runtime threads for the parity check"
    )
    parser.add_argument(
        "--save-folded", type=output_file, default=None, help="also write the folded weights here"
    )
    parser.add_argument(
        "--ops",
        choices=("standard", "ort"),
        default="standard",
        help="standard: ONNX ops only (any runtime; default); ort: GLA/SLA layers on ONNX Runtime's "
        "com.microsoft.LinearAttention and CausalConvWithState (needs onnxruntime >= 1.25.1)",
    )


def run(args: argparse.Namespace) -> int:
    from slab_edge.export.lm import export_lm
    from slab_edge.io import check_outputs_distinct
    from slab_edge.runtime.generate import DECODE_FILE, PREFILL_FILE
    from slab_edge.train.lm import MODEL_FILE

    source = Path(args.model)
    if args.output is not None:
        output = args.output
    else:
        output = (source if source.is_dir() else source.parent) / (
            "genai" if args.format == "genai" else "onnx"
        )
    check_outputs_distinct(
        {"--save-folded": args.save_folded},
        {
            "model": source,
            "run's model file": source / MODEL_FILE if source.is_dir() else None,
            "exported prefill graph": output / PREFILL_FILE,
            "exported decode graph": output / DECODE_FILE,
        },
    )
    report = export_lm(
        source,
        output,
        opset=args.opset,
        simplify=not args.no_simplify,
        parity=not args.no_parity,
        parity_tokens=args.parity_tokens,
        threads=args.threads,
        save_folded=args.save_folded,
        ops=args.ops,
        format=args.format,
    )
    lines = report.lines() if not args.no_parity else report.lines()[:1] + report.lines()[-1:]
    for line in lines:
        print(f"[slab-edge export-lm] {line}")
    print(
        f"[slab-edge export-lm] wrote {', '.join(report.files)} to {report.folder} in {report.seconds:.1f} s"
    )
    return 0
