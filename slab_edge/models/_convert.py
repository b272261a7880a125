"""Official SLAB checkpoint conversion and strict loading, shared by every model family.

Official checkpoints (github.com/xinghaochen/SLAB) differ from ours only in the progressive norm:

    official LinearNorm                      ours (ProgressiveNorm)
    X.warm      (remaining warm-up steps)    X.warmup_steps = warm
    X.iter      (remaining decay steps)      X.step         = total_step - iter
    X.total_step                             X.decay_steps  = total_step
    X.norm1.*   (LayerNorm / RMSNorm)        X.ln.*
    X.norm2.alpha, X.norm2.bn.*  (RepBN)     X.repbn.alpha, X.repbn.bn.*

A plain official RepBN (`X.alpha`, `X.bn.*`) already has our names. The schedule mapping is exact: with
warm > 0 the official decay has not started (iter == total_step), so step = 0 and our warm-up runs the
same remaining `warm` steps; afterwards g = 1 - (step - warm) / total_step = iter / total_step.

API:
    unwrap_state_dict(obj) -> state dict            ({'model': sd} / {'state_dict': sd}, 'module.' prefixes)
    convert_official_norms(state_dict) -> state dict (LinearNorm keys -> ProgressiveNorm keys)
    load_state_dict_file(path) -> state dict         (.safetensors, .pth/.pt/.bin incl. official checkpoints)
    resample_grid_embedding(...)                    (resize a [1, prefix + H*W, C] positional table)
    check_state_dict(model, state_dict)              (raise CheckpointError naming missing/unexpected/shape)
    load_checkpoint(model, path_or_sd, filter_fn=None, strict=True) -> model
"""

from __future__ import annotations

import pickle
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from slab_edge.errors import CheckpointError

#: Keys under which training scripts (SLAB/Swin/DeiT style, timm, Lightning) nest the model weights.
_NESTED_KEYS = ("model", "state_dict", "model_state_dict", "module")
#: Wrapper prefixes added by DataParallel/DDP, torch.compile, or a wrapping LightningModule.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")

_LINEARNORM_RENAMES = (("norm1.", "ln."), ("norm2.", "repbn."))


def unwrap_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """The weights inside a checkpoint object, with wrapper prefixes removed.

    Accepts a plain state dict or a training checkpoint that nests it under 'model' / 'state_dict'
    (optimizer, config, epoch and other entries are ignored). A prefix ('module.', '_orig_mod.',
    'model.') is stripped only when every key carries it.

    Raises:
        CheckpointError: `obj` holds no tensors.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint is a {type(obj).__name__}, not a state dict or a dict holding one")
    for key in _NESTED_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(torch.is_tensor(v) for v in inner.values()):
            obj = inner
            break
    state = {k: v for k, v in obj.items() if torch.is_tensor(v)}
    if not state:
        raise CheckpointError(
            f"checkpoint holds no tensors (top-level keys: {', '.join(map(str, list(obj)[:8])) or 'none'})"
        )
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def linearnorm_prefixes(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Module prefixes ('blocks.0.norm1.', ...) of official LinearNorm entries in a state dict."""
    return [k[: -len("total_step")] for k in state_dict if k == "total_step" or k.endswith(".total_step")]


def convert_official_norms(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename official LinearNorm entries to ProgressiveNorm ones; every other key passes unchanged.

    A LinearNorm is recognised by its `X.total_step` buffer. Order of the remaining keys is kept.
    Idempotent: a state dict already in our naming is returned as a copy.
    """
    prefixes = {p for p in linearnorm_prefixes(state_dict) if (p + "iter") in state_dict}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            out[key] = value
            continue
        rest = key[len(prefix) :]
        if rest == "warm":
            out[prefix + "warmup_steps"] = value.detach().clone().long().reshape(())
        elif rest == "iter":
            total = state_dict[prefix + "total_step"].long().reshape(())
            out[prefix + "step"] = (total - value.long().reshape(())).clamp(min=0)
        elif rest == "total_step":
            out[prefix + "decay_steps"] = value.detach().clone().long().reshape(())
        else:
            for old, new in _LINEARNORM_RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
                    break
            out[prefix + rest] = value
    return out


class _StubObject:
    """Stands in for any non-torch class pickled into a checkpoint (e.g. the official yacs config)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass

    def __call__(self, *args, **kwargs):
        return self


def _stub_pickle_module() -> types.ModuleType:
    """A pickle module whose Unpickler resolves torch/numpy/builtins and stubs everything else.

    Official SLAB checkpoints pickle the training config (a yacs CfgNode) next to the weights, which
    `torch.load(weights_only=True)` rejects and a full unpickle would need yacs for.
    """
    allowed = ("torch", "collections", "numpy", "builtins", "_codecs", "copyreg")

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if module.split(".")[0] in allowed:
                return super().find_class(module, name)
            return _StubObject

    mod = types.ModuleType("slab_edge_stub_pickle")
    mod.Unpickler = Unpickler
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()
    mod.__dict__.update({k: getattr(pickle, k) for k in ("UnpicklingError", "HIGHEST_PROTOCOL")})
    return mod


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (.safetensors or a torch pickle) and return its unwrapped state dict.

    Raises:
        CheckpointError: missing or unreadable file, or no tensors inside.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return unwrap_state_dict(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own error types
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"cannot read {path}: {exc}") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Official checkpoints carry a pickled config object; read the tensors, stub the rest.
        try:
            obj = torch.load(
                path, map_location="cpu", weights_only=False, pickle_module=_stub_pickle_module()
            )
        except Exception as exc:
            raise CheckpointError(f"cannot read {path}: {exc}") from exc
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    return unwrap_state_dict(obj)


def resample_grid_embedding(
    table: torch.Tensor,
    new_hw: tuple[int, int],
    num_prefix_tokens: int = 0,
    old_hw: tuple[int, int] | None = None,
    mode: str = "bicubic",
) -> torch.Tensor:
    """Resize a positional table [1, prefix + H*W, C] to [1, prefix + H'*W', C] (prefix rows kept).

    Args:
        table: the stored table; its grid is assumed square unless `old_hw` is given.
        new_hw: (H', W') of the target grid.
        num_prefix_tokens: leading rows (class token) that carry no grid position.
        old_hw: source grid; inferred as a square when None.
        mode: 'bicubic' (timm's convention) or 'bilinear' (the official PVT runtime resize).
    """
    n = table.shape[1] - num_prefix_tokens
    if old_hw is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise CheckpointError(f"cannot resample a positional table of {n} tokens: not a square grid")
        old_hw = (side, side)
    if tuple(old_hw) == tuple(new_hw):
        return table
    prefix, grid = table[:, :num_prefix_tokens], table[:, num_prefix_tokens:]
    c = grid.shape[-1]
    grid = grid.reshape(1, old_hw[0], old_hw[1], c).permute(0, 3, 1, 2).float()  # [1, C, H, W]
    grid = torch.nn.functional.interpolate(grid, size=tuple(new_hw), mode=mode, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_hw[0] * new_hw[1], c).to(table.dtype)
    return torch.cat([prefix, grid], dim=1)


def _format_list(names: list[str], limit: int = 16) -> str:
    """Names grouped by module pattern (layer indices -> '*'), leaves in braces, with counts, e.g.
    'blocks.*.attn.qkv.{weight,bias} (x12)'."""
    groups: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for name in names:
        parts = ["*" if part.isdigit() else part for part in name.split(".")]
        parent, leaf = ".".join(parts[:-1]), parts[-1]
        leaves = groups.setdefault(parent, [])
        if leaf not in leaves:
            leaves.append(leaf)
        counts[parent] = counts.get(parent, 0) + 1
    items = []
    for parent, leaves in groups.items():
        label = leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}"
        label = f"{parent}.{label}" if parent else label
        repeats = counts[parent] // len(leaves)
        items.append(f"{label} (x{repeats})" if repeats > 1 else label)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more groups)" if len(items) > limit else "")


def state_dict_mismatch(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """A one-paragraph description of how `state_dict` fails to match `model`, or None if it matches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shape_keys = [
        k for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shape_keys):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {_format_list(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_format_list(unexpected)}")
    if shape_keys:
        shown = [
            f"{k} {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}" for k in shape_keys[:4]
        ]
        more = f", ... ({len(shape_keys) - 4} more)" if len(shape_keys) > 4 else ""
        parts.append(f"{len(shape_keys)} shape mismatches: {', '.join(shown)}{more}")
    return "; ".join(parts)


def check_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Raise CheckpointError if `state_dict` does not match `model` key for key and shape for shape."""
    problem = state_dict_mismatch(model, state_dict)
    if problem is not None:
        name = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        raise CheckpointError(f"{source} does not fit {name}: {problem}")


def family_filter_fn(model: nn.Module) -> Callable | None:
    """The `checkpoint_filter_fn` of the module that defines the model's class, if it has one."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def load_checkpoint(
    model: nn.Module,
    path_or_state_dict: str | Path | Mapping,
    filter_fn: Callable | None = None,
    strict: bool = True,
) -> nn.Module:
    """Load an official or slab-edge checkpoint into `model` (in place) and return the model.

    Args:
        model: the target model.
        path_or_state_dict: a file path (.safetensors / .pth) or an already loaded checkpoint object.
        filter_fn: `checkpoint_filter_fn(state_dict, model)` converting foreign names; defaults to the
            one of the model's family module (official LinearNorm names, positional-table resampling).
        strict: every key and shape must match.

    Raises:
        CheckpointError: unreadable checkpoint, or (strict) missing/unexpected keys or shape mismatches,
            listed by name.
    """
    if isinstance(path_or_state_dict, (str, Path)):
        source = str(path_or_state_dict)
        state = load_state_dict_file(path_or_state_dict)
    else:
        source = "checkpoint"
        state = unwrap_state_dict(path_or_state_dict)
    filter_fn = filter_fn if filter_fn is not None else family_filter_fn(model)
    state = filter_fn(state, model) if filter_fn is not None else convert_official_norms(state)
    if strict:
        check_state_dict(model, state, source)
        model.load_state_dict(state, strict=True)
    else:
        expected = model.state_dict()
        fitting = {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}
        model.load_state_dict(fitting, strict=False)
    return model
