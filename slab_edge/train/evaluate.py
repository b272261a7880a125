"""Top-1 accuracy and loss of a classifier over a loader (sharded over ranks, exact counts)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slab_edge.train.distributed import DistInfo

__all__ = ["autocast_context", "evaluate", "predict_logits"]


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for `dtype` on `device`, or a no-op when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    dist: DistInfo | None = None,
) -> dict[str, Any]:
    """{"acc": top-1 in %, "loss": mean cross-entropy, "n": images} over `loader` (model switched to eval).

    In a distributed job each rank evaluates its shard and the sums are all-reduced.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.float64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast_context(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()
        correct += (logits.argmax(dim=-1) == targets).sum().double()
        count += targets.numel()
    if dist is not None and dist.enabled:
        import torch.distributed as tdist

        stats = torch.stack([correct, loss_sum, count])
        tdist.all_reduce(stats)
        correct, loss_sum, count = stats
    model.train(was_training)
    n = max(float(count), 1.0)
    return {"acc": 100.0 * float(correct) / n, "loss": float(loss_sum) / n, "n": int(count)}


@torch.no_grad()
def predict_logits(model: nn.Module, loader, device: torch.device | str = "cpu") -> torch.Tensor:
    """All logits [N, num_classes] (float32, CPU) of `model` in eval mode over `loader`."""
    device = torch.device(device)
    model.eval()
    out = [model(images.to(device)).float().cpu() for images, _ in loader]
    return torch.cat(out) if out else torch.empty(0)
