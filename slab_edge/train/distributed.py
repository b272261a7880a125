"""torchrun-ready process setup: one code path for 1 process, N GPUs, or N nodes (model-agnostic).

torchrun (or any launcher) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them
the run is a single process. The backend is nccl on CUDA and gloo on CPU. Only rank 0 writes files
(`DistInfo.is_main`); collective helpers below are no-ops in a single process.

    info = init_distributed("auto")
    model = wrap_ddp(model.to(info.device), info)
    ...
    cleanup_distributed(info)
"""

from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from slab_edge.errors import InputError

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "all_reduce_min",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "gather_objects",
    "init_distributed",
    "resolve_device",
    "seed_everything",
    "unwrap_model",
    "wrap_ddp",
]


@dataclass
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank> if CUDA is available, else cpu; 'cuda' -> cuda:<local_rank>."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' requested but torch sees no CUDA GPU (use --device cpu)")
        return torch.device("cuda", local_rank)
    try:
        return torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r} (auto | cpu | cuda | cuda:N)") from None


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's environment (or stay single-process).

    Args:
        device: 'auto' | 'cpu' | 'cuda'; under torchrun each process takes cuda:LOCAL_RANK.
        timeout_s: collective timeout (long: rank 0 may be writing a checkpoint while others wait).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(device=dev)
    import torch.distributed as dist

    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    # Joining is idempotent: several runs in one torchrun job (e.g. the ablation) share one group, which
    # the entry point destroys once at the end (`cleanup_distributed`); re-creating it can hang.
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=backend)


def cleanup_distributed(info: DistInfo | None = None) -> None:
    """Leave the process group (call once, when the process has no more collective work)."""
    if info is None or info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def _reduce(value: float | torch.Tensor, info: DistInfo, op) -> float:
    tensor = torch.as_tensor(value, dtype=torch.float64, device=info.device).detach().clone().reshape(())
    if info.enabled:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=op)
    return float(tensor)


def all_reduce_mean(value: float | torch.Tensor, info: DistInfo) -> float:
    """Mean of a scalar over all ranks (the value itself in a single process)."""
    if not info.enabled:
        return float(value)
    import torch.distributed as dist

    return _reduce(value, info, dist.ReduceOp.SUM) / info.world_size


def all_reduce_min(value: float | torch.Tensor, info: DistInfo) -> float:
    """Minimum of a scalar over all ranks (e.g. an "all ranks are fine" flag)."""
    if not info.enabled:
        return float(value)
    import torch.distributed as dist

    return _reduce(value, info, dist.ReduceOp.MIN)


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects, e.g. RNG states)."""
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank `src`'s obj on every rank (e.g. an error message that must stop all ranks together)."""
    if not info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """DistributedDataParallel around `model` (already on info.device) when the job has >1 process."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP and/or torch.compile wrappers (the one whose state_dict is saved)."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif (
            hasattr(model, "module")
            and isinstance(model.module, nn.Module)
            and type(model).__name__
            in (
                "DistributedDataParallel",
                "DataParallel",
            )
        ):
            model = model.module
        else:
            return model


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - timm Mixup draws from the legacy global RNG
    torch.manual_seed(seed)
