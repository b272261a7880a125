"""Crash-safe training checkpoints: safetensors tensors + a JSON manifest (model-agnostic).

A checkpoint "tag" (e.g. `last`, `best`) in a folder is one JSON manifest `<tag>.json` that names its
tensor files by content:

    checkpoints/
      last.json                          manifest: model identity, position, config, trainer state,
                                         optimizer param groups, RNG states, scheduler, file hashes
      best.json                          (may name the same files as last.json)
      step00000120-model.safetensors     model state_dict (plain keys; loads with load_state_dict)
      step00000120-ema.safetensors       EMA weights (when EMA is on)
      step00000120-train.safetensors     optimizer state tensors + torch RNG states (+ extra tensors)

Write order makes every crash harmless: tensor files are written atomically under new names first, then
the manifest is replaced atomically, then files no manifest names are deleted. A SIGKILL at any moment
leaves the previous manifest pointing at complete files. Every file's size and sha256 are in the
manifest and checked on load, so a truncated or edited file is reported, never half-loaded.

Every safetensors file also carries the model identity in its metadata (key "slab_edge", JSON), so a
weights file alone says what model it belongs to (see `read_safetensors`).

    save_checkpoint(folder, "last", model_state=model.state_dict(), optimizer=opt, meta={...}, ...)
    ckpt = load_checkpoint(resolve_checkpoint(path))
    model.load_state_dict(ckpt.model_state); opt.load_state_dict(ckpt.optimizer_state)
    restore_rng_state(ckpt.rng_states[rank])
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slab_edge.errors import CheckpointError
from slab_edge.io import atomic_path, atomic_write_json

__all__ = [
    "FORMAT",
    "LoadedCheckpoint",
    "capture_rng_state",
    "check_model_identity",
    "collect_garbage",
    "flatten_optimizer_state",
    "link_checkpoint",
    "load_checkpoint",
    "read_manifest",
    "read_safetensors",
    "resolve_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "unflatten_optimizer_state",
    "write_safetensors",
]

FORMAT = "slab-edge-checkpoint/1"
META_KEY = "slab_edge"
CHECKPOINT_DIR = "checkpoints"


# ---------------------------------------------------------------------------------------------------------
# safetensors with a JSON metadata block


def write_safetensors(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None
) -> Path:
    """Save tensors atomically; `meta` (JSON-able) goes into the file's metadata under "slab_edge".

    Tensors are made contiguous and moved to CPU; tensors sharing storage are cloned (safetensors refuses
    shared storage).
    """
    from safetensors.torch import save_file

    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen and ptr != -1:
            t = t.clone()
        seen.add(ptr)
        out[name] = t.contiguous()
    metadata = {META_KEY: json.dumps(meta or {}, default=str)}
    with atomic_path(path) as tmp:
        save_file(out, str(tmp), metadata=metadata)
    return Path(path)


def read_safetensors(path: str | Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, slab-edge metadata) of a safetensors file; unreadable files raise CheckpointError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as err:  # safetensors raises its own SafetensorError / OSError variants
        raise CheckpointError(f"{path} is not a readable safetensors file ({_first_line(err)})") from None
    try:
        meta = json.loads(raw_meta.get(META_KEY, "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: its slab-edge metadata is not valid JSON") from None
    return tensors, meta


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# RNG states


def capture_rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """This process's RNG states: (JSON part: python + numpy, tensor part: torch CPU + every CUDA device)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG is what timm Mixup draws from
    json_part = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda{i}"] = s
    return json_part, tensors


def restore_rng_state(json_part: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of `capture_rng_state`."""
    version, internal, gauss = json_part["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = json_part["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(tensors["torch_cpu"].to(torch.uint8))
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda"))
    if cuda and torch.cuda.is_available():
        states = [tensors[k].to(torch.uint8) for k in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)


# ---------------------------------------------------------------------------------------------------------
# optimizer state <-> (JSON, tensors)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)


def flatten_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """optimizer.state_dict() -> (JSON part, {"optim.state.<param>.<key>" | "optim.group.<i>.<key>": t})."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.state.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = _jsonable(value)
    groups = []
    for i, group in enumerate(state["param_groups"]):
        g = {}
        for key, value in group.items():
            if torch.is_tensor(value):
                tensors[f"optim.group.{i}.{key}"] = value
            else:
                g[key] = _jsonable(value)
        groups.append(g)
    return {"param_groups": groups, "state_scalars": scalars}, tensors


def unflatten_optimizer_state(json_part: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Inverse of `flatten_optimizer_state` (param ids become ints again)."""
    state: dict[int, dict[str, Any]] = {}
    groups = [dict(g) for g in json_part["param_groups"]]
    for name, value in tensors.items():
        if name.startswith("optim.state."):
            pid, key = name[len("optim.state.") :].split(".", 1)
            state.setdefault(int(pid), {})[key] = value
        elif name.startswith("optim.group."):
            i, key = name[len("optim.group.") :].split(".", 1)
            groups[int(i)][key] = value
    for pid, values in json_part.get("state_scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    for g in groups:  # betas etc. were tuples
        for key, value in g.items():
            if key != "params" and isinstance(value, list):
                g[key] = tuple(value)
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------------------------------------------
# manifests


@dataclass
class LoadedCheckpoint:
    """Everything a manifest and its files hold, verified."""

    manifest: dict[str, Any]
    path: Path
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor] | None = None
    optimizer_state: dict[str, Any] | None = None
    rng_states: list[tuple[dict[str, Any], dict[str, torch.Tensor]]] = field(default_factory=list)
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def meta(self) -> dict[str, Any]:
        """The model identity block (name, kwargs, data config...)."""
        return self.manifest.get("meta", {})

    @property
    def state(self) -> dict[str, Any]:
        """The trainer's own state (position, best metric, guard counters...)."""
        return self.manifest.get("state", {})


def save_checkpoint(
    folder: str | Path,
    tag: str,
    *,
    step: int,
    model_state: dict[str, torch.Tensor],
    meta: dict[str, Any],
    state: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    optimizer=None,
    scheduler=None,
    ema_state: dict[str, torch.Tensor] | None = None,
    rng_states: list[tuple[dict[str, Any], dict[str, torch.Tensor]]] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    keep_tags: tuple[str, ...] = (),
) -> Path:
    """Write checkpoint `tag` into `folder` (crash-safe; see the module docstring). Returns the manifest path.

    Args:
        step: optimizer steps taken (names the files; two tags at the same step share them).
        model_state: the plain (unwrapped) model's state_dict.
        meta: model identity, stored in the manifest and in every safetensors file ("name", "kwargs", ...).
        state: JSON-able trainer state (epoch, batch position, best metric, ...).
        config: the resolved run config (JSON-able).
        optimizer: a torch optimizer (its state tensors go to the -train file, the rest to JSON).
        scheduler: anything with state_dict() (timm schedulers); stored as JSON where possible.
        ema_state: EMA model state_dict.
        rng_states: one `capture_rng_state()` result per rank.
        extra_tensors: any further tensors the trainer needs to resume exactly.
        keep_tags: other tags whose files must survive garbage collection (all manifests in the folder
            are kept anyway; this is for tags written later in the same call sequence).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = f"step{int(step):08d}"
    files: dict[str, dict[str, Any]] = {}

    def put(kind: str, tensors: dict[str, torch.Tensor]) -> None:
        name = f"{prefix}-{kind}.safetensors"
        path = write_safetensors(folder / name, tensors, {**meta, "content": kind, "step": int(step)})
        files[kind] = {"file": name, "bytes": path.stat().st_size, "sha256": _sha256(path)}

    put("model", model_state)
    if ema_state is not None:
        put("ema", ema_state)
    train_tensors: dict[str, torch.Tensor] = {}
    optim_json = None
    if optimizer is not None:
        optim_json, optim_tensors = flatten_optimizer_state(optimizer.state_dict())
        train_tensors.update(optim_tensors)
    rng_json = []
    for rank, (rj, rt) in enumerate(rng_states or []):
        rng_json.append(rj)
        train_tensors.update({f"rng.{rank}.{k}": v for k, v in rt.items()})
    for k, v in (extra_tensors or {}).items():
        train_tensors[f"extra.{k}"] = v
    if train_tensors:
        put("train", train_tensors)
    manifest = {
        "format": FORMAT,
        "tag": tag,
        "step": int(step),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "meta": meta,
        "state": state or {},
        "config": config or {},
        "optimizer": optim_json,
        "scheduler": _jsonable(scheduler.state_dict()) if scheduler is not None else None,
        "rng": rng_json,
        "files": files,
    }
    manifest_path = atomic_write_json(folder / f"{tag}.json", manifest)
    collect_garbage(folder)
    return manifest_path


def link_checkpoint(folder: str | Path, src_tag: str, dst_tag: str) -> Path:
    """Make tag `dst_tag` name the same files as `src_tag` (e.g. best = last): one atomic manifest write."""
    folder = Path(folder)
    manifest = read_manifest(folder / f"{src_tag}.json")
    manifest["tag"] = dst_tag
    path = atomic_write_json(folder / f"{dst_tag}.json", manifest)
    collect_garbage(folder)
    return path


def collect_garbage(folder: str | Path) -> list[Path]:
    """Delete tensor files no manifest in `folder` names, and temp files left by a killed writer."""
    folder = Path(folder)
    referenced: set[str] = set()
    for manifest in folder.glob("*.json"):
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            referenced.update(f["file"] for f in data.get("files", {}).values())
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            continue  # a foreign or broken json: leave everything it might refer to
    removed = []
    for path in list(folder.glob("step*.safetensors")) + list(folder.glob(".*.tmp")):
        if path.name not in referenced:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def resolve_checkpoint(path: str | Path, tag: str = "last") -> Path:
    """The manifest for a run folder, a checkpoints folder or a manifest path (CheckpointError if none)."""
    path = Path(path)
    candidates = (
        [path] if path.suffix == ".json" else [path / CHECKPOINT_DIR / f"{tag}.json", path / f"{tag}.json"]
    )
    for c in candidates:
        if c.is_file():
            return c
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    raise CheckpointError(
        f"no checkpoint found at {path} (looked for {', '.join(str(c) for c in candidates)})"
    )


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A manifest's JSON, checked for format (CheckpointError when unreadable or foreign)."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt: {_first_line(err)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a slab-edge training checkpoint (format {FORMAT})")
    if "model" not in manifest.get("files", {}):
        raise CheckpointError(f"checkpoint {path} is corrupt: it names no model weights file")
    return manifest


def _verified_file(folder: Path, manifest_path: Path, entry: dict[str, Any]) -> Path:
    path = folder / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"checkpoint {manifest_path} is incomplete: {path.name} is missing")
    size = path.stat().st_size
    if size != entry.get("bytes"):
        raise CheckpointError(
            f"checkpoint {manifest_path} is corrupt: {path.name} has {size} bytes, "
            f"expected {entry.get('bytes')}"
        )
    if entry.get("sha256") and _sha256(path) != entry["sha256"]:
        raise CheckpointError(f"checkpoint {manifest_path} is corrupt: {path.name} fails its sha256 check")
    return path


def load_checkpoint(path: str | Path, device: str = "cpu", verify: bool = True) -> LoadedCheckpoint:
    """Read and verify a manifest and all its files (CheckpointError on anything missing or damaged)."""
    manifest_path = Path(path)
    manifest = read_manifest(manifest_path)
    folder = manifest_path.parent
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    for kind, entry in manifest["files"].items():
        file = _verified_file(folder, manifest_path, entry) if verify else folder / entry["file"]
        loaded[kind], _ = read_safetensors(file, device=device)
    train = loaded.get("train", {})
    optimizer_state = None
    if manifest.get("optimizer") is not None:
        optimizer_state = unflatten_optimizer_state(
            manifest["optimizer"], {k: v for k, v in train.items() if k.startswith("optim.")}
        )
    rng_states = []
    for rank, rj in enumerate(manifest.get("rng") or []):
        pre = f"rng.{rank}."
        rng_states.append((rj, {k[len(pre) :]: v for k, v in train.items() if k.startswith(pre)}))
    extra = {k[len("extra.") :]: v for k, v in train.items() if k.startswith("extra.")}
    return LoadedCheckpoint(
        manifest=manifest,
        path=manifest_path,
        model_state=loaded["model"],
        ema_state=loaded.get("ema"),
        optimizer_state=optimizer_state,
        rng_states=rng_states,
        extra_tensors=extra,
    )


def check_model_identity(meta: dict[str, Any], name: str, kwargs: dict[str, Any] | None, source: str) -> None:
    """CheckpointError unless the checkpoint was made for model `name` with the same builder kwargs."""
    saved_name = meta.get("model")
    if saved_name != name:
        raise CheckpointError(f"{source} was trained for model {saved_name!r}, not {name!r}")
    saved_kwargs = meta.get("model_kwargs") or {}
    if kwargs is not None and json.dumps(saved_kwargs, sort_keys=True) != json.dumps(kwargs, sort_keys=True):
        raise CheckpointError(f"{source} was built with model kwargs {saved_kwargs}, not {kwargs}")
