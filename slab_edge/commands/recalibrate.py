"""`slab-edge recalibrate`: refresh BatchNorm/RepBN running statistics of a trained model (frozen weights).

slab-edge recalibrate --checkpoint runs/x --data digits --epochs 1 --output runs/x/recal.safetensors
"""

from __future__ import annotations

import argparse

from slab_edge.commands.argtypes import (
    float_range,
    non_negative_float,
    non_negative_int,
    output_file,
    positive_int,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="model .safetensors, checkpoint .json or run folder"
    )
    parser.add_argument("--data", default="digits", help="digits | ImageFolder root (train/ images are used)")
    parser.add_argument(
        "--output",
        required=True,
        type=output_file,
        help="where to write the recalibrated model (.safetensors)",
    )
    parser.add_argument(
        "--epochs", type=non_negative_float, default=1.0, help="passes over the training images"
    )
    parser.add_argument("--steps", type=non_negative_int, default=0, help="extra batches on top of --epochs")
    parser.add_argument(
        "--momentum",
        type=float_range(0, 1, low_open=True),
        default=None,
        help="BN momentum (default: cumulative mean)",
    )
    parser.add_argument(
        "--ema", action="store_true", help="start from the EMA weights of a training checkpoint"
    )
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--num-workers", type=non_negative_int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")


def run(args: argparse.Namespace) -> int:
    import itertools

    from slab_edge.errors import InputError
    from slab_edge.io import check_outputs_distinct
    from slab_edge.train.data import loaders_for_model
    from slab_edge.train.distributed import resolve_device
    from slab_edge.train.evaluate import evaluate
    from slab_edge.train.model_files import checkpoint_files, load_model, save_model_file
    from slab_edge.train.recalibrate import batchnorm_layers, recalibrate_bn

    inputs = checkpoint_files(args.checkpoint, prefer="unfolded", ema=args.ema)
    check_outputs_distinct({"--output": args.output}, inputs)
    device = resolve_device(args.device)
    model, meta = load_model(
        args.checkpoint, which="ema" if args.ema else "model", device=device, prefer="unfolded"
    )
    if meta.get("deploy"):
        raise InputError(
            f"{args.checkpoint} is folded (deploy): its BatchNorms are gone; recalibrate before folding"
        )
    if not batchnorm_layers(model):
        raise InputError(f"model {meta.get('model')} has no BatchNorm/RepBN layers to recalibrate")
    train_loader, val_loader, _ = loaders_for_model(
        args.data, meta, args.batch_size, args.num_workers, str(device)
    )
    batches = int(round(args.epochs * len(train_loader))) + args.steps
    if batches < 1:
        raise InputError("nothing to do: --epochs and --steps give 0 batches")
    before = evaluate(model, val_loader, device)
    stream = itertools.islice(itertools.chain.from_iterable(itertools.repeat(train_loader)), batches)
    used = recalibrate_bn(model, stream, momentum=args.momentum, device=device)
    after = evaluate(model, val_loader, device)
    save_model_file(
        args.output, model, {**meta, "metrics": {"acc": after["acc"], "acc_before_recal": before["acc"]}}
    )
    print(
        f"recalibrated {len(batchnorm_layers(model))} BatchNorm layers over {used} batches: "
        f"top-1 {before['acc']:.2f}% -> {after['acc']:.2f}% -> {args.output}"
    )
    return 0
