"""`slab-edge generate`: stream text from an exported SLAB-LM on ONNX Runtime (torch-free).

    slab-edge generate runs/lm/export --prompt "def main(" --max-new-tokens 64
    slab-edge generate runs/lm/export --prompt-file prompt.txt --temperature 0.8 --top-p 0.95 --seed 1
    slab-edge generate runs/lm/genai --prompt "def main("      # an export-lm --format genai folder

The text goes to stdout as it is generated; the statistics (prompt tokens, prefill time, decode tokens/s)
go to stderr at the end, so `> out.txt` captures only text.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slab_edge.commands._runtime_args import add_custom_op_library_argument
from slab_edge.commands.argtypes import float_range, non_negative_float, non_negative_int, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        help="export-lm folder (prefill.onnx + decode.onnx) or one of its .onnx, or an export-lm --format "
        "genai folder (runs on onnxruntime-genai: its own sampler, always stops at EOS)",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-file", type=Path, help="read the prompt from this UTF-8 file")
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=64, help="tokens to generate (default 64)"
    )
    parser.add_argument(
        "--temperature",
        type=non_negative_float,
        default=0.0,
        help="sampling temperature; 0 = greedy (default)",
    )
    parser.add_argument(
        "--top-k", type=non_negative_int, default=0, help="sample among the k likeliest tokens (0 = all)"
    )
    parser.add_argument(
        "--top-p",
        type=float_range(0, 1, low_open=True),
        default=1.0,
        help="nucleus sampling mass (1.0 = off)",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="random seed of the sampler (default 0)"
    )
    parser.add_argument(
        "--tokenizer",
        help="tokenizer to use instead of the one the metadata names: 'byte' or a tokenizer.json "
        "(checked against the model)",
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument("--provider", default="cpu", help="ONNX Runtime provider: cpu | cuda | tensorrt")
    add_custom_op_library_argument(parser)
    parser.add_argument("--no-echo", action="store_true", help="do not print the prompt before the output")
    parser.add_argument("--no-stop", action="store_true", help="keep going after an end-of-text token")


def run(args: argparse.Namespace) -> int:
    from slab_edge.data.text_tokenizer import tokenizer_from_path
    from slab_edge.errors import InputError
    from slab_edge.runtime.genai import is_genai_folder, open_genai
    from slab_edge.runtime.generate import Sampler, open_lm

    if args.prompt_file is not None:
        try:
            prompt = args.prompt_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError(f"prompt file {args.prompt_file} is not UTF-8 text") from None
    else:
        prompt = args.prompt
    if not prompt:
        raise InputError("empty prompt: give at least one character (--prompt or --prompt-file)")
    sampler = Sampler(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    tokenizer = tokenizer_from_path(args.tokenizer) if args.tokenizer else None

    opener = open_genai if is_genai_folder(args.model) else open_lm
    options = {"tokenizer": tokenizer, "threads": args.threads, "provider": args.provider}
    if opener is open_genai:
        if args.no_stop:
            raise InputError(
                "--no-stop: onnxruntime-genai always stops at its EOS token (use a slab-format export)"
            )
        if args.custom_op_library:
            raise InputError("--custom-op-library: an onnxruntime-genai folder loads no custom-op library")
    else:
        options["custom_op_library"] = args.custom_op_library
    with opener(args.model, **options) as lm:
        prompt_ids = lm.tokenizer.encode(prompt)
        if not prompt_ids:
            raise InputError("the prompt encodes to no tokens")
        out = sys.stdout
        if not args.no_echo:
            out.write(prompt)
            out.flush()

        def emit(piece: str) -> None:
            out.write(piece)
            out.flush()

        result = lm.generate(
            prompt_ids, args.max_new_tokens, sampler, stop_at_eos=not args.no_stop, on_text=emit
        )
        out.write("\n")
        out.flush()
    mode = "greedy" if sampler.greedy else f"T={args.temperature} top-k={args.top_k} top-p={args.top_p}"
    print(f"[slab-edge generate] {result.summary()} ({mode}, seed {args.seed})", file=sys.stderr)
    return 0
