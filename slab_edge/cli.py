"""`slab-edge <command>`: one argument definition per command, each in `slab_edge/commands/<command>.py`.

Command modules are imported lazily, so `slab-edge infer` on a device never imports torch.
Every command module defines `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from slab_edge import __version__
from slab_edge.errors import SlabEdgeError

#: command -> (module under slab_edge.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a vision model (SLAB/DeiT recipe, progressive norm, torchrun-ready)"),
    "recalibrate": ("recalibrate", "refresh BatchNorm/RepBN running statistics with frozen weights"),
    "fold": ("fold", "re-parameterize a checkpoint: fold every norm, write a deploy checkpoint"),
    "evaluate": ("evaluate", "top-1 accuracy of a checkpoint on a data set"),
    "export": ("export", "export a (deploy) checkpoint to ONNX: fp32, fp16-mixed, int8 QDQ"),
    "build": ("build", "build a TensorRT / TensorRT-RTX engine from an ONNX file"),
    "build-ops": ("build_ops", "build the native SLA libraries (ORT custom ops, CUDA kernel, TRT plugin)"),
    "infer": ("infer", "classify images with an .onnx or .engine model (torch-free)"),
    "bench": ("bench", "latency / throughput / memory of one or two models, side by side"),
    "compare": ("compare", "torch vs ONNX Runtime vs TensorRT outputs on the same inputs"),
    "train-lm": ("train_lm", "train a SLAB-LM language model (sla | gla | softmax attention)"),
    "export-lm": ("export_lm", "export SLAB-LM prefill and decode-step graphs to ONNX"),
    "generate": ("generate", "generate text from an exported SLAB-LM with ONNX Runtime (torch-free)"),
    "demo": ("demo", "the end-to-end job on the embedded defaults (digits)"),
}


class CommandParser(argparse.ArgumentParser):
    """A usage error is one line, `slab-edge <command>: error: <message>`, and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def command_parser(command: str) -> argparse.ArgumentParser:
    """The argument parser of one command (imports only that command's module)."""
    module_name, help_text = COMMANDS[command]
    module = importlib.import_module(f"slab_edge.commands.{module_name}")
    parser = CommandParser(prog=f"slab-edge {command}", description=help_text)
    module.add_arguments(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slab-edge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"slab-edge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    top, rest = parser.parse_known_args(argv)
    if top.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(f"slab_edge.commands.{COMMANDS[top.command][0]}")
    try:
        args = command_parser(top.command).parse_args(rest)
    except SystemExit as done:  # --help (0) or a usage error (2, one line on stderr)
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    debug = top.debug or os.environ.get("SLAB_EDGE_DEBUG") == "1"
    try:
        return int(module.run(args) or 0)
    except (SlabEdgeError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        if debug:
            raise
        print(f"slab-edge {top.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"slab-edge {top.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
