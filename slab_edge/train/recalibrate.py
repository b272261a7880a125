"""BatchNorm recalibration: refresh running statistics with frozen weights (SLAB's final phase).

After the LayerNorm -> RepBN transition the BN running statistics lag behind the final weights. SLAB
freezes the weights and re-estimates the statistics: model in eval mode (dropout, drop path, progressive
norms in their inference path) with only the BatchNorm layers in train mode, no gradients. With
momentum=None BatchNorm keeps a cumulative average over all recalibration batches (every batch counts
equally) instead of an exponential one.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

__all__ = ["batchnorm_layers", "recalibrate_bn", "sync_bn_stats"]


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm (including those inside RepBN / progressive norms) that tracks running stats."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and m.running_mean is not None
    ]


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    loader,
    steps: int | None = None,
    momentum: float | None = None,
    device: torch.device | str | None = None,
    reset: bool = True,
    progress=None,
) -> int:
    """Re-estimate BN running statistics of `model` in place from `loader` batches; weights untouched.

    Args:
        model: any model; its BatchNorm layers (also inside RepBN) are refreshed.
        loader: yields (images, targets) or images.
        steps: batches to use (None = one pass over the loader).
        momentum: BN momentum during recalibration; None = cumulative average.
        device: where to run (default: the model's device).
        reset: start the statistics from scratch (True) or refine the current ones.
        progress: optional callable(n) called after each batch (progress bars).

    Returns:
        The number of batches used (0 if the model has no BatchNorm: nothing to do).
    """
    bns = batchnorm_layers(model)
    if not bns:
        return 0
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    was_training = model.training
    saved = [(bn, bn.momentum, bn.training) for bn in bns]
    model.eval()
    for bn in bns:
        if reset:
            bn.reset_running_stats()
        bn.momentum = momentum
        bn.train()
    used = 0
    try:
        batches = loader if steps is None else itertools.islice(loader, int(steps))
        for batch in batches:
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            model(images.to(device, non_blocking=True))
            used += 1
            if progress is not None:
                progress(1)
    finally:
        model.train(was_training)
        for bn, mom, training in saved:
            bn.momentum = mom
            bn.train(training)
    return used


@torch.no_grad()
def sync_bn_stats(model: nn.Module, info) -> None:
    """Average BN running statistics over ranks (each recalibrated on its own shard).

    Combines per-rank (mean, var) as a pooled distribution: mean = avg(mean_r),
    var = avg(var_r + mean_r^2) - mean^2 (exact for equal shard sizes). No-op in a single process.
    """
    if info is None or not info.enabled:
        return
    import torch.distributed as dist

    for bn in batchnorm_layers(model):
        mean = bn.running_mean.double()
        second = bn.running_var.double() + mean * mean
        stats = torch.stack([mean, second])
        dist.all_reduce(stats)
        stats /= info.world_size
        bn.running_mean.copy_(stats[0].to(bn.running_mean.dtype))
        bn.running_var.copy_((stats[1] - stats[0] * stats[0]).clamp(min=0).to(bn.running_var.dtype))
