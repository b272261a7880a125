"""Reusable helpers for model tests (import as `from _helpers import ...` from tests/models).

- shared_dir() / conformance_dir(): the project's shared folder (env SLAB_EDGE_SHARED, else beside or inside
  the repository); None when absent.
- require_conformance(): that folder or pytest.skip with the reason.
- conformance_variants(family=None): official variant names ('slab_deit_t', ...) present there.
- load_conformance(variant) -> (official state dict, input x [2, 3, 224, 224], official logits [2, 10]).
- conformance_meta(variant): the variant's JSON (architecture numbers, notes).
- randomize_norm_statistics(model, seed): BN statistics/affine and RepBN alpha drawn at random, so a fold that
  drops a term shows up (default statistics hide such bugs).
- randomize_layernorms(model, seed): LayerNorm affine drawn at random.
- randomize_weights(model, seed): Linear/Conv weights U(+-0.7/sqrt(fan_in)), biases U(+-0.1), positional
  tables N(0, 0.1) (the conformance recipe): residual branches matter, so a wrong fold moves the logits.
  With the default N(0, 0.02) init the branches are negligible and hide fold bugs.
- fold_parity(model, x) -> (deploy model, max |diff| / max |logit|).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from slab_edge.testing import randomize_norm_statistics  # noqa: F401  (re-exported for the model tests)

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_dir() -> Path | None:
    """The shared folder: $SLAB_EDGE_SHARED, else <repo>/shared, else <repo>/../shared (CI layout)."""
    candidates = []
    if os.environ.get("SLAB_EDGE_SHARED"):
        candidates.append(Path(os.environ["SLAB_EDGE_SHARED"]))
    candidates += [REPO_ROOT / "shared", REPO_ROOT / ".." / "shared"]
    for path in candidates:
        if (path / "reference").is_dir():
            return path.resolve()
    return None


def conformance_dir() -> Path | None:
    root = shared_dir()
    path = root / "reference" / "conformance" if root is not None else None
    return path if path is not None and (path / "index.json").is_file() else None


def require_conformance() -> Path:
    """The conformance folder, or skip the calling test saying why."""
    path = conformance_dir()
    if path is None:
        pytest.skip(
            "conformance vectors not found: set SLAB_EDGE_SHARED or place shared/ beside the repository "
            f"(looked in $SLAB_EDGE_SHARED, {REPO_ROOT / 'shared'}, {REPO_ROOT.parent / 'shared'})"
        )
    return path


def _variant_key(variant: str) -> str:
    return variant if variant.endswith("_reduced") else variant + "_reduced"


def conformance_variants(family: str | None = None) -> list[str]:
    """Official names ('slab_deit_t', 'pvt_m_prepbn', ...) with conformance vectors, optionally one family.

    Empty when the folder is absent (parametrized tests then collect nothing; add a separate presence test).
    """
    path = conformance_dir()
    if path is None:
        return []
    names = []
    for key in sorted(json.loads((path / "index.json").read_text())["variants"]):
        name = key[: -len("_reduced")]
        if family is None or conformance_meta(name).get("family") == family:
            names.append(name)
    return names


def conformance_meta(variant: str) -> dict:
    path = require_conformance()
    return json.loads((path / f"{_variant_key(variant)}.json").read_text())


def load_conformance(variant: str) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """(official state dict, input x [2, 3, 224, 224], official eval logits [2, 10]) for a variant."""
    from safetensors.torch import load_file

    path = require_conformance()
    key = _variant_key(variant)
    state = load_file(str(path / f"{key}.safetensors"))
    x = load_file(str(path / "input_2x3x224x224.safetensors"))["x"]
    logits = load_file(str(path / f"{key}.out.safetensors"))["logits"]
    return state, x, logits


@torch.no_grad()
def randomize_layernorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """In place: LayerNorm weight U(.8,1.2), bias U(-.1,.1)."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) and module.weight is not None:
            module.weight.copy_(torch.rand(module.weight.shape, generator=g) * 0.4 + 0.8)
            module.bias.copy_((torch.rand(module.bias.shape, generator=g) - 0.5) * 0.2)
    return model


@torch.no_grad()
def randomize_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """In place: Linear/Conv weights U(+-0.7/sqrt(fan_in)), biases U(+-0.1); parameters named like positional
    tables (pos_embed*, positional_encoding, cls_token) N(0, 0.1). Returns the model."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            bound = 0.7 / module.weight[0].numel() ** 0.5
            module.weight.copy_((torch.rand(module.weight.shape, generator=g) * 2 - 1) * bound)
            if module.bias is not None:
                module.bias.copy_((torch.rand(module.bias.shape, generator=g) * 2 - 1) * 0.1)
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("pos_embed") or leaf in ("positional_encoding", "cls_token"):
            param.copy_(torch.randn(param.shape, generator=g) * 0.1)
    return model


@torch.no_grad()
def fold_parity(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, float]:
    """(reparameterized copy, max |logit difference| / max |logit|) in eval mode."""
    from slab_edge.layers.reparam import reparameterize_model

    model = model.eval()
    deploy = reparameterize_model(model)
    ref, out = model(x), deploy(x)
    return deploy, float((ref - out).abs().max() / ref.abs().max().clamp(min=1e-12))
