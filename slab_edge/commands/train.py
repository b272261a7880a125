"""`slab-edge train`: the SLAB/DeiT recipe with progressive norm, exact resume and torchrun support.

slab-edge train                                   # slab_deit_digits on the embedded digits, ~2-3 min CPU
slab-edge train --model slab_deit_tiny_patch16_224 --data /data/imagenet --batch-size 128
slab-edge train --config my.yaml --set lr=1e-3 --set opt_betas=[0.9,0.95]
slab-edge train --resume runs/slab_deit_digits-digits    # continue exactly where it stopped
slab-edge train --ablation                        # LayerNorm vs PRepBN vs PRepBN+SLA on digits
torchrun --nproc_per_node 8 -m slab_edge.cli train --model ... --data ...
"""

from __future__ import annotations

import argparse
import json

from slab_edge.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from slab_edge.train.config import add_config_arguments
    from slab_edge.train.recipes import TrainConfig

    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="RUN",
        help="continue a run (its folder or checkpoints/<tag>.json); bare --resume uses --output's run",
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="train the LayerNorm / PRepBN / PRepBN+SLA variants on the same recipe; print a table",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.epilog = (
        "Every config key is also a flag (--key-name VALUE) and a YAML key; see the saved config.yaml."
    )
    add_config_arguments(parser, TrainConfig)


def resolve_from_args(args: argparse.Namespace):
    """(TrainConfig, resume path or None) from parsed arguments: the function behind the command."""
    from slab_edge.train.config import cli_overrides, load_yaml_config
    from slab_edge.train.recipes import TrainConfig, resolve_train_config
    from slab_edge.train.vision import default_run_dir, load_run_config

    file_values = load_yaml_config(args.config)
    cli_values = cli_overrides(args, TrainConfig)
    resume = args.resume
    if resume is None:
        return resolve_train_config(file_values, cli_values), None
    if resume == "auto":
        probe = resolve_train_config(file_values, cli_values)
        resume = probe.output or str(default_run_dir(probe))
    from slab_edge.train.checkpoint import resolve_checkpoint

    saved = load_run_config(resume)
    if not saved.get("output"):  # the run used the default folder: keep writing where the checkpoint is
        saved["output"] = str(resolve_checkpoint(resume).parent.parent)
    if "model" in cli_values and saved.get("model") not in (None, cli_values["model"]):
        from slab_edge.errors import CheckpointError

        raise CheckpointError(
            f"checkpoint {resume} was trained for model {saved.get('model')!r}, not {cli_values['model']!r}"
        )
    return resolve_train_config(file_values, cli_values, base=saved), resume


def _check_output(args: argparse.Namespace, cfg) -> None:
    """The run folder must be neither the config file nor the data folder."""
    from slab_edge.io import check_outputs_distinct
    from slab_edge.train.vision import default_run_dir

    data = None if cfg.data in ("digits", "synthetic") else cfg.data
    run_dir = cfg.output or default_run_dir(cfg)
    check_outputs_distinct({"--output": run_dir}, {"--config": args.config, "--data": data})


def run(args: argparse.Namespace) -> int:
    from slab_edge.train.distributed import cleanup_distributed

    try:
        return _run(args)
    finally:
        cleanup_distributed()


def _run(args: argparse.Namespace) -> int:
    from slab_edge.train.config import config_to_dict

    cfg, resume = resolve_from_args(args)
    if args.print_config:
        print(json.dumps(config_to_dict(cfg), indent=2))
        return 0
    _check_output(args, cfg)
    if args.ablation:
        if resume is not None:
            raise InputError("--ablation starts fresh runs; it cannot be combined with --resume")
        from slab_edge.train.ablation import run_ablation

        run_ablation(cfg)
        return 0
    from slab_edge.train.vision import train_vision

    train_vision(cfg, resume=resume)
    return 0
