"""`slab-edge fold`: re-parameterize a trained model (every norm folded) and write a deploy checkpoint.

    slab-edge fold --checkpoint runs/x --output runs/x/deploy.safetensors --data digits

The folded model is checked against the unfolded one: max |logit difference| on random inputs always, and
top-1 on --data when given (must agree within 0.1 point, otherwise nothing is written). The file's metadata
counts what was folded and what is left (`folded_norms`, `unfolded_norms`); `folded` is true only when no
norm is left, so a LayerNorm model's deploy file says false (with a warning).
"""

from __future__ import annotations

import argparse

from slab_edge.commands.argtypes import output_file, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="model .safetensors, checkpoint .json or run folder"
    )
    parser.add_argument(
        "--output", required=True, type=output_file, help="deploy checkpoint to write (.safetensors)"
    )
    parser.add_argument(
        "--data", default=None, help="also compare top-1 on this data (digits | ImageFolder root)"
    )
    parser.add_argument("--ema", action="store_true", help="fold the EMA weights of a training checkpoint")
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--device", default="cpu", help="cpu | cuda")


def run(args: argparse.Namespace) -> int:
    import sys

    import torch

    from slab_edge.errors import InputError, SlabEdgeError
    from slab_edge.io import check_outputs_distinct
    from slab_edge.layers.reparam import (
        FoldCheckError,
        describe_fold,
        describe_norms,
        fold_metadata,
        reparameterize_model,
    )
    from slab_edge.train.distributed import resolve_device
    from slab_edge.train.model_files import checkpoint_files, load_model, save_model_file
    from slab_edge.train.vision import FOLD_TOLERANCE_POINTS, finalize_model

    inputs = checkpoint_files(args.checkpoint, prefer="unfolded", ema=args.ema)
    check_outputs_distinct({"--output": args.output}, inputs)
    device = resolve_device(args.device)
    model, meta = load_model(
        args.checkpoint, which="ema" if args.ema else "model", device=device, prefer="unfolded"
    )
    if meta.get("deploy"):
        raise InputError(f"{args.checkpoint} is already folded (deploy checkpoint)")
    try:
        folded = reparameterize_model(model)
    except FoldCheckError as err:
        raise InputError(f"cannot fold {meta.get('model')}: {err}") from None
    size = meta.get("input_size") or [3, 224, 224]
    x = torch.randn(4, *size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        max_diff = float((model(x) - folded(x)).abs().max())
    metrics = {"max_logit_diff_random": max_diff}
    line = f"folded {meta.get('model')}: max |logit diff| on random inputs {max_diff:.2e}"
    if args.data:
        from slab_edge.train.data import loaders_for_model

        _, val_loader, _ = loaders_for_model(args.data, meta, args.batch_size, 0, str(device))
        fin = finalize_model(model, val_loader=val_loader, device=device)
        diff = fin["parity"]["acc_diff_points"]
        metrics.update(acc=fin["folded_eval"]["acc"], acc_unfolded=fin["eval"]["acc"])
        line += f"; top-1 {fin['eval']['acc']:.2f}% -> {fin['folded_eval']['acc']:.2f}% on {args.data}"
        if diff > FOLD_TOLERANCE_POINTS:
            raise SlabEdgeError(
                f"{line}: differs by {diff:.2f} points (> {FOLD_TOLERANCE_POINTS}); nothing written"
            )
    folding = fold_metadata(folded, model)
    save_model_file(args.output, folded, {**meta, "deploy": True, **folding, "metrics": metrics})
    print(f"{line}; {describe_fold(folding)} -> {args.output}")
    if not folding["folded"]:
        print(
            f"slab-edge fold: warning: {meta.get('model')} keeps norms that cannot fold "
            f"({describe_norms(folding['unfolded_norms'])}); its metadata says folded: false",
            file=sys.stderr,
        )
    return 0
