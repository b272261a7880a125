"""Model + checkpoint -> an eval-mode, folded model ready to export, with its preprocessing and labels.

A checkpoint is a training checkpoint (norms present: folded here with `reparameterize_model`) or a deploy
checkpoint (saved from a model built with `deploy=True`: loaded into that structure directly). Which one is
decided by the file's own metadata (`deploy` / `folded`) or, failing that, by which structure its keys fit.

Checkpoint files:
    run folder | *.json manifest   written by `slab-edge train`: loaded with slab_edge.train.model_files
    *.safetensors   state dict; metadata from the safetensors header (slab-edge model files keep it as JSON
                    under the key "slab_edge") and from a `<stem>.json` beside it
    *.pt|.pth|.ckpt|.bin  torch.load(weights_only=True): a state dict, or a dict holding one under
                    "model" / "state_dict" / "model_state_dict" next to JSON-able metadata
Metadata keys read (all optional): model, model_kwargs, deploy | folded, labels | classes, num_classes,
data_config | pretrained_cfg ({input_size, mean, std, interpolation, crop_pct}).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slab_edge.errors import CheckpointError, InputError, SlabEdgeError

DATA_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct")
_STATE_KEYS = ("model", "state_dict", "model_state_dict", "module")
_TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")


@dataclass
class PreparedModel:
    """What export needs: the model (eval mode) and what the device must know about it."""

    model: Any  #: torch.nn.Module, eval mode
    name: str
    num_classes: int
    folded: bool  #: no norm is left (see slab_edge.layers.reparam.fold_metadata)
    source: str  #: "training checkpoint, folded" | "deploy checkpoint" | "random init, folded" | ...
    data_config: dict[str, Any]
    labels: list[str]
    checkpoint: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    unfolded_norms: dict[str, int] = field(default_factory=dict)  #: {norm type: count} left in the model
    folded_norms: int | None = None  #: norms folded away (None: unknown, e.g. a deploy checkpoint)
    weights: str = "checkpoint"  #: "checkpoint" | "random" (no checkpoint: initialised weights) | "module"
    weights_sha256: str | None = None  #: digest of the loaded weights (`state_dict_sha256`), before folding


# -- reading files --------------------------------------------------------------------------------------
def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, TypeError):
        return value


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, Any]]:
    """(state dict of tensors, metadata) from a checkpoint file.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable, corrupt or truncated file, or no state dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    meta: dict[str, Any] = {}
    if path.suffix == ".json":
        raise CheckpointError(f"{path}: a training manifest, read it with prepare_model (not a weights file)")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
            with safe_open(str(path), framework="pt") as handle:
                meta.update({k: _maybe_json(v) for k, v in (handle.metadata() or {}).items()})
            if isinstance(meta.get("slab_edge"), dict):  # slab-edge model files (slab_edge.train.model_files)
                meta = {**meta, **meta.pop("slab_edge")}
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    elif path.suffix in _TORCH_SUFFIXES:
        import torch

        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # pickle, zip and unpickler errors all mean the same to the user
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{path}: cannot load checkpoint ({first})") from None
        state, meta = _split_torch_checkpoint(obj, path)
    else:
        raise CheckpointError(
            f"{path}: unknown checkpoint type {path.suffix!r}; use .safetensors or .pt/.pth (torch.save)"
        )
    side = path.with_suffix(".json")
    if side.is_file() and path.suffix != ".json":
        try:
            meta = {**json.loads(side.read_text()), **meta}
        except ValueError as err:
            raise CheckpointError(f"{side}: checkpoint metadata is not valid JSON ({err})") from None
    if not state:
        raise CheckpointError(f"{path}: holds no tensors")
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    return state, meta


def _split_torch_checkpoint(obj: Any, path: Path) -> tuple[dict, dict[str, Any]]:
    import torch

    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path}: expected a state dict or a dict holding one, got {type(obj).__name__}"
        )
    for key in _STATE_KEYS:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            meta = {k: v for k, v in obj.items() if k != key and not isinstance(v, (torch.Tensor, dict))}
            meta.update(
                {k: v for k, v in obj.items() if k in ("model_kwargs", "data_config", "pretrained_cfg")}
            )
            return inner, meta
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise CheckpointError(
        f"{path}: no state dict found (looked for a tensor dict or keys {', '.join(_STATE_KEYS)})"
    )


def read_labels(path: str | os.PathLike) -> list[str]:
    """Class names from a text file (one per line) or a JSON list / {index: name} object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as err:
            raise InputError(f"{path}: labels file is not valid JSON ({err})") from None
        if isinstance(data, dict):
            data = [data[k] for k in sorted(data, key=lambda k: int(k))]
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON list of class names")
        return [str(x) for x in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


# -- building -------------------------------------------------------------------------------------------
def _create(name: str, kwargs: dict[str, Any]):
    """slab-edge zoo model, or any timm model (e.g. a softmax baseline exported by the same path)."""
    from slab_edge.models import create_model

    try:
        return create_model(name, **kwargs), True
    except InputError:
        import timm

        if not timm.is_model(name):
            raise
        return timm.create_model(name, **kwargs), False


def _classifier_out_features(model, state: dict) -> int | None:
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "head")
    weight = state.get(f"{classifier}.weight")
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None


def _load_error(model, state: dict) -> str | None:
    """None if `state` loads strictly into `model` (it is then loaded), else a one-line reason."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln]
        detail = lines[0] if lines else str(err).strip().splitlines()[-1]
        return f"{detail}{f' (+{len(lines) - 1} more)' if len(lines) > 1 else ''}"
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if not missing and not unexpected:
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    return "; ".join(parts)


def _data_config(model, meta: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    from timm.data import resolve_model_data_config

    cfg = dict(resolve_model_data_config(model))
    img_size = kwargs.get("img_size")
    if img_size is not None:
        hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        cfg["input_size"] = (cfg["input_size"][0], *hw)
    for source in (meta.get("pretrained_cfg"), meta.get("data_config"), meta):
        if isinstance(source, dict):
            cfg.update({k: source[k] for k in DATA_KEYS if source.get(k) is not None})
    return {
        "input_size": [int(v) for v in cfg["input_size"]],
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "interpolation": str(cfg.get("interpolation") or "bicubic"),
        "crop_pct": float(cfg.get("crop_pct") or 1.0),
    }


def prepare_model(
    name: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    model_kwargs: dict[str, Any] | None = None,
    labels: list[str] | str | os.PathLike | None = None,
    fold: bool = True,
    model=None,
    ema: bool = False,
) -> PreparedModel:
    """Build (or take) a model, load a checkpoint, fold its norms and collect its export metadata.

    Args:
        name: registered slab-edge model (or official builder name, or any timm model). May be omitted
            when the checkpoint's metadata names the model or `model` is given.
        checkpoint: training or deploy checkpoint (see module docstring); None = random initialisation.
        model_kwargs: extra constructor arguments (e.g. {"embed_dim": 24} for a reduced width).
        labels: class names, or a labels file; default: the checkpoint's, else "0".."N-1".
        fold: fold every foldable norm (reparameterize_model); False exports the eval graph as is.
        model: an already built torch module to export instead of `name` (tests, notebooks).
        ema: for a training run folder / manifest, export the EMA weights.

    Raises:
        InputError: unknown model, bad labels. CheckpointError: a checkpoint that fits neither the
        training nor the deploy structure of the model. FileNotFoundError: missing files.
    """
    from slab_edge.layers.reparam import describe_fold, fold_metadata, reparameterize_model

    manifest = checkpoint is not None and (Path(checkpoint).is_dir() or Path(checkpoint).suffix == ".json")
    if manifest:
        model, meta = _load_training_run(checkpoint, name, ema)
        state = {}
    else:
        state, meta = read_checkpoint(checkpoint) if checkpoint is not None else ({}, {})
    kwargs = {**(meta.get("model_kwargs") or {}), **(model_kwargs or {})}
    name = name or meta.get("model") or (type(model).__name__ if model is not None else None)
    if not name:
        raise InputError("no model name given and the checkpoint does not name its model")
    if isinstance(meta.get("model"), str) and model is None and meta["model"] != name:
        from slab_edge.models import resolve_model_name

        try:
            same = resolve_model_name(meta["model"]) == resolve_model_name(name)
        except InputError:
            same = False
        if not same:
            raise CheckpointError(f"checkpoint {checkpoint} is for model {meta['model']!r}, not {name!r}")

    source = "given module"
    is_slab = True
    if manifest:
        source = "deploy checkpoint" if meta.get("deploy") else "training checkpoint"
        is_slab = _is_slab(name)
    elif model is None:
        model, is_slab = _create(name, kwargs)
        num_classes = _classifier_out_features(model, state) if state else None
        if num_classes is not None and num_classes != getattr(model, "num_classes", num_classes):
            kwargs["num_classes"] = num_classes
            model, is_slab = _create(name, kwargs)
        source = "random init"
        if state:
            model, source = _load_checkpoint(name, model, state, meta, kwargs, is_slab, checkpoint)
    model.eval()
    weights = "random" if source == "random init" else "module" if source == "given module" else "checkpoint"
    digest = state_dict_sha256(model.state_dict()) if weights == "checkpoint" else None
    folded_already = source == "deploy checkpoint"
    trained = None
    if fold and not folded_already:
        trained = model
        try:
            model = reparameterize_model(model, check=is_slab)
        except RuntimeError as err:  # FoldCheckError: a norm the model did not declare unfoldable
            raise SlabEdgeError(f"cannot fold {name}: {err}") from None
    folding = fold_metadata(model, trained)
    if folded_already and isinstance(meta.get("folded_norms"), int):
        folding["folded_norms"] = meta["folded_norms"]
    folded = (fold or folded_already) and folding["folded"]
    if trained is not None:
        source += ", folded" if folded else f", {describe_fold(folding)}"

    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if isinstance(labels, (str, os.PathLike)):
        labels = read_labels(labels)
    labels = labels or meta.get("labels") or meta.get("classes")
    if labels is None:
        labels = [str(i) for i in range(num_classes)]
    labels = [str(x) for x in labels]
    if num_classes and len(labels) != num_classes:
        raise InputError(f"{len(labels)} class labels given but {name} has {num_classes} classes")
    return PreparedModel(
        model=model,
        name=name,
        num_classes=num_classes,
        folded=folded,
        source=source,
        data_config=_data_config(model, meta, kwargs),
        labels=labels,
        checkpoint=str(checkpoint) if checkpoint is not None else None,
        model_kwargs=kwargs,
        unfolded_norms=folding["unfolded_norms"],
        folded_norms=folding.get("folded_norms"),
        weights=weights,
        weights_sha256=digest,
    )


def state_dict_sha256(state: dict) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes (sorted by name): the same weights give
    the same digest whatever file format carried them."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key]
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _is_slab(name: str) -> bool:
    from slab_edge.models import resolve_model_name

    try:
        resolve_model_name(name)
    except InputError:
        return False
    return True


def _load_training_run(path, name: str | None, ema: bool):
    """A `slab-edge train` run folder or checkpoint manifest, through the training package's own loader."""
    if not Path(path).exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    from slab_edge.train.model_files import load_model

    model, meta = load_model(path, which="ema" if ema else "model", expect_model=name)
    return model, dict(meta)


def _load_checkpoint(name, model, state, meta, kwargs, is_slab, checkpoint):
    """Load `state` into the training structure or the deploy structure, whichever it fits."""
    declared = meta.get("deploy", meta.get("folded"))
    attempts = ["deploy", "training"] if declared else ["training", "deploy"]
    if not is_slab or declared is False:
        attempts = ["training"]
    reasons = {}
    for kind in attempts:
        candidate = model if kind == "training" else _create(name, {**kwargs, "deploy": True})[0]
        reason = _load_error(candidate, state)
        if reason is not None:
            converted = _filtered(candidate, state)
            if converted is not None:
                candidate = _create(name, {**kwargs, "deploy": True} if kind == "deploy" else kwargs)[0]
                reason = _load_error(candidate, converted)
        if reason is None:
            return candidate, f"{kind} checkpoint"
        reasons[kind] = reason
    detail = "; ".join(f"as {k} model: {r}" for k, r in reasons.items())
    raise CheckpointError(f"checkpoint {checkpoint} does not fit {name} ({detail})")


def _filtered(model, state: dict) -> dict | None:
    """The model family's checkpoint_filter_fn(state, model) (official key names etc.), if it has one."""
    module = sys.modules.get(type(model).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    if fn is None:
        return None
    try:
        return fn(dict(state), model)
    except Exception:  # a filter that cannot handle this file: report the plain mismatch instead
        return None
