"""`slab-edge evaluate`: top-1 accuracy of a model file, checkpoint or run folder on a data set.

slab-edge evaluate --checkpoint runs/demo/deploy.safetensors            # digits held-out split
slab-edge evaluate --checkpoint runs/x --data /data/imagenet --ema
"""

from __future__ import annotations

import argparse
import json

from slab_edge.commands.argtypes import non_negative_int, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="model .safetensors, checkpoint .json or run folder"
    )
    parser.add_argument("--data", default="digits", help="digits | ImageFolder root (its val/ split is used)")
    parser.add_argument(
        "--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint"
    )
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--num-workers", type=non_negative_int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from slab_edge.train.data import loaders_for_model
    from slab_edge.train.distributed import resolve_device
    from slab_edge.train.evaluate import evaluate
    from slab_edge.train.model_files import load_model

    device = resolve_device(args.device)
    model, meta = load_model(args.checkpoint, which="ema" if args.ema else "model", device=device)
    _, val_loader, bundle = loaders_for_model(args.data, meta, args.batch_size, args.num_workers, str(device))
    res = evaluate(model, val_loader, device)
    deploy = bool(meta.get("deploy"))
    out = {
        "checkpoint": str(args.checkpoint),
        "model": meta.get("model"),
        "deploy": deploy,  # the deploy structure (folded as far as the model folds)
        "folded": bool(meta.get("folded", deploy)),  # no norm left (see layers.reparam.fold_metadata)
        "unfolded_norms": meta.get("unfolded_norms"),
        "data": args.data,
        **res,
    }
    if args.json:
        print(json.dumps(out))
    else:
        kind = "folded" if out["folded"] else "deploy, norms left unfolded" if deploy else "unfolded"
        print(
            f"{out['model']} ({kind}) on {args.data}: top-1 {res['acc']:.2f}% over {res['n']} images, "
            f"loss {res['loss']:.4f}"
        )
    return 0
