"""Self-describing vision model files: safetensors weights whose metadata says how to rebuild the model.

Metadata (JSON under the safetensors metadata key "slab_edge"):

    format         "slab-edge-model/1"
    model          registered model name (timm or slab-edge)
    model_kwargs   extra builder kwargs (e.g. {"norm_type": "layernorm"})
    num_classes    classifier width
    deploy         true: build with deploy=True (every norm folded) and load strictly
    folded         same as deploy (the runtime metadata key)
    input_size, mean, std, interpolation, crop_pct, labels     preprocessing, as in ONNX metadata_props
    metrics        e.g. {"acc": 98.1, "acc_unfolded": 98.1}
    slab_edge_version

`load_model(path)` accepts such a file, a training-checkpoint manifest (`.../checkpoints/last.json`) or a
run folder (its `deploy.safetensors` if present, else its last checkpoint):

    model, meta = load_model("runs/digits/deploy.safetensors")
    save_model_file("deploy.safetensors", folded_model, meta)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from slab_edge.errors import CheckpointError, InputError
from slab_edge.train.checkpoint import (
    check_model_identity,
    load_checkpoint,
    read_manifest,
    read_safetensors,
    resolve_checkpoint,
    write_safetensors,
)

__all__ = [
    "MODEL_FORMAT",
    "build_model",
    "checkpoint_files",
    "resolve_name",
    "load_model",
    "model_meta",
    "resolve_model_file",
    "save_model_file",
]

MODEL_FORMAT = "slab-edge-model/1"
DEPLOY_FILE = "deploy.safetensors"
FINAL_FILE = "final.safetensors"


def resolve_name(name: str) -> str:
    """The timm name for `name` (any timm model, a slab-edge model, or an official SLAB builder name).

    Raises:
        InputError: unknown name, with close matches.
    """
    import timm

    import slab_edge.models as zoo

    return name if timm.is_model(name) else zoo.resolve_model_name(name)


def build_model(
    name: str,
    kwargs: dict[str, Any] | None = None,
    num_classes: int | None = None,
    drop_path: float | None = None,
    deploy: bool = False,
) -> nn.Module:
    """Create a registered model by name (any timm model, or a slab-edge model by official alias too).

    Raises:
        InputError: unknown name (with close matches) or builder kwargs the model rejects.
    """
    import timm

    kwargs = dict(kwargs or {})
    resolved = resolve_name(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if drop_path is not None:
        kwargs["drop_path_rate"] = drop_path
    if deploy:
        kwargs["deploy"] = True
    try:
        return timm.create_model(resolved, **kwargs)
    except TypeError as err:
        raise InputError(f"model {resolved!r} rejects builder arguments {sorted(kwargs)}: {err}") from None


def model_meta(
    name: str,
    model_kwargs: dict[str, Any],
    num_classes: int,
    data_config: dict[str, Any],
    labels: list[str],
    deploy: bool = False,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata block stored with every weights file and checkpoint manifest."""
    from slab_edge import __version__

    return {
        "format": MODEL_FORMAT,
        "model": name,
        "model_kwargs": dict(model_kwargs),
        "num_classes": int(num_classes),
        "deploy": bool(deploy),
        "folded": bool(deploy),
        **{
            k: data_config[k]
            for k in ("input_size", "mean", "std", "interpolation", "crop_pct")
            if k in data_config
        },
        "labels": list(labels),
        "metrics": dict(metrics or {}),
        "slab_edge_version": __version__,
    }


def save_model_file(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write `model.state_dict()` + `meta` to a safetensors file atomically."""
    return write_safetensors(path, model.state_dict(), {**meta, "format": MODEL_FORMAT})


def resolve_model_file(path: str | Path, prefer: str = "deploy") -> tuple[str, Path]:
    """("file" | "manifest", path) for a weights file, a manifest, or a run folder.

    For a run folder, prefer="deploy" picks deploy.safetensors, then final.safetensors, then the last
    checkpoint; prefer="unfolded" skips deploy.safetensors (for recalibrating or folding).
    """
    path = Path(path)
    if path.is_dir():
        names = [DEPLOY_FILE, FINAL_FILE] if prefer == "deploy" else [FINAL_FILE]
        for name in names:
            if (path / name).is_file():
                return "file", path / name
        return "manifest", resolve_checkpoint(path)
    if path.suffix == ".json":
        return "manifest", resolve_checkpoint(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return "file", path


def checkpoint_files(path: str | Path, prefer: str = "deploy", ema: bool = False) -> list[tuple[str, Path]]:
    """(label, path) of every file `load_model(path, ...)` reads: an output must be none of them.

    A path that does not resolve gives only itself (`load_model` then says what is wrong with it).
    """
    files = [("--checkpoint", Path(path))]
    try:
        if ema and Path(path).is_dir():
            kind, resolved = "manifest", resolve_checkpoint(path)
        else:
            kind, resolved = resolve_model_file(path, prefer)
        files.append(("checkpoint file", resolved))
        if kind == "manifest":
            entries = read_manifest(resolved)["files"].values()
            files += [("checkpoint file", resolved.parent / entry["file"]) for entry in entries]
    except CheckpointError:
        pass
    return files


def load_model(
    path: str | Path,
    which: str = "model",
    device: str | torch.device = "cpu",
    expect_model: str | None = None,
    prefer: str = "deploy",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a model file / manifest / run folder and load its weights strictly.

    Args:
        which: "model" or "ema" (manifests only; "ema" on a run folder reads its last checkpoint).
        expect_model: raise CheckpointError if the file belongs to another model.
        prefer: for run folders, "deploy" (folded file first) or "unfolded" (see `resolve_model_file`).

    Returns:
        (model in eval mode on `device`, metadata).
    """
    if which == "ema" and Path(path).is_dir():
        kind, resolved = "manifest", resolve_checkpoint(path)
    else:
        kind, resolved = resolve_model_file(path, prefer)
    if kind == "manifest":
        ckpt = load_checkpoint(resolved)
        meta = ckpt.meta
        state = ckpt.ema_state if which == "ema" else ckpt.model_state
        if state is None:
            raise CheckpointError(f"checkpoint {resolved} has no {which} weights")
    else:
        if which == "ema":
            raise CheckpointError(
                f"{resolved} is a model file; EMA weights live in training checkpoints (pass the run folder)"
            )
        state, meta = read_safetensors(resolved)
        if meta.get("format") != MODEL_FORMAT or "model" not in meta:
            raise CheckpointError(f"{resolved} carries no slab-edge model metadata (format {MODEL_FORMAT})")
    if expect_model is not None:
        check_model_identity(meta, expect_model, None, str(resolved))
    model = build_model(
        meta["model"], meta.get("model_kwargs"), meta.get("num_classes"), deploy=meta.get("deploy")
    )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"{resolved} does not fit model {meta['model']}: {str(err).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), meta
