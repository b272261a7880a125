"""`slab-edge train-lm`: train SLAB-LM (sla | gla | softmax, or hybrids; rmsnorm | prepbn), resumable.

slab-edge train-lm                                          # tiny SLA/PRepBN LM on Python's stdlib sources
slab-edge train-lm --attention gla --steps 300 --output runs/lm-gla
slab-edge train-lm --attention sla --attention-pattern LLLS --model-kwargs "{num_layers: 4}"   # 3:1 hybrid
slab-edge train-lm --corpus my_texts/ --tokenizer bpe --bpe-vocab 4096
slab-edge train-lm --resume runs/lm-gla --steps 600          # continue (here: extend) a run exactly
torchrun --nproc-per-node 8 -m slab_edge.cli train-lm --model 350m --amp bf16 --batch-size 8 --seq-len 2048
"""

from __future__ import annotations

import argparse
import json
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from slab_edge.train.config import add_config_arguments
    from slab_edge.train.lm import LMTrainConfig

    parser.add_argument(
        "--resume",
        dest="resume_run",
        nargs="?",
        const="auto",
        default=None,
        metavar="RUN",
        help="continue the run in RUN (default: --output's) from its last checkpoint, with its saved config",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.epilog = (
        "Every config key is also a flag (--key-name VALUE) and a YAML key; see the saved config.yaml."
    )
    add_config_arguments(parser, LMTrainConfig, skip=("resume",))


def resolve_from_args(args: argparse.Namespace):
    """The LMTrainConfig the arguments describe (a resumed run starts from its saved config.yaml)."""
    from pathlib import Path

    from slab_edge.errors import InputError
    from slab_edge.train.config import build_config, cli_overrides, load_yaml_config
    from slab_edge.train.lm import LMTrainConfig, resolve_lm_config

    file_values = load_yaml_config(args.config)
    cli_values = cli_overrides(args, LMTrainConfig)
    if args.resume_run is None:
        return resolve_lm_config(
            build_config(LMTrainConfig, ("config file", file_values), ("command line", cli_values))
        )
    run = args.resume_run
    if run == "auto":
        probe = resolve_lm_config(build_config(LMTrainConfig, file_values, cli_values))
        run = probe.output
    saved = Path(run) / "config.yaml"
    if not saved.is_file():
        raise InputError(f"--resume: {run} holds no run (no config.yaml)")
    base = load_yaml_config(saved)
    base.update(output=str(run), resume=True, overwrite=False)
    return resolve_lm_config(
        build_config(
            LMTrainConfig, ("saved config", base), ("config file", file_values), ("command line", cli_values)
        )
    )


def _check_output(args: argparse.Namespace, cfg) -> None:
    """The run folder must be none of the inputs: config file, corpus, tokenizer file."""
    from slab_edge.data.text import STDLIB
    from slab_edge.io import check_outputs_distinct

    inputs = {
        "--config": args.config,
        "--corpus": None if cfg.corpus == STDLIB else cfg.corpus,
        "--tokenizer": None if cfg.tokenizer in ("byte", "bpe") else cfg.tokenizer,
    }
    check_outputs_distinct({"--output": cfg.output}, inputs)


def run(args: argparse.Namespace) -> int:
    from slab_edge.train.config import config_to_dict
    from slab_edge.train.lm import train_lm

    cfg = resolve_from_args(args)
    if args.print_config:
        print(json.dumps(config_to_dict(cfg), indent=2))
        return 0
    _check_output(args, cfg)
    summary = train_lm(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 reports
    print(
        f"[slab-edge train-lm] {summary['steps']} steps, {summary['tokens_seen']:,} tokens in "
        f"{summary['trained_seconds']:.1f} s; validation loss {summary['val_loss']:.4f} nats/token, "
        f"{summary['val_bpb']:.4f} bits/byte ({summary['val_tokens']:,} tokens) -> {cfg.output}"
    )
    return 0
