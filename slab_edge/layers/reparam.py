"""The one re-parameterization protocol.

A module that owns a norm *and* the layer that absorbs it implements `reparameterize()`: in place,
idempotent (a second call finds Identity where the norm was and returns), eval-mode semantics.
`reparameterize_model(model)` deep-copies, switches to eval, calls every `reparameterize()` children-first
(so a model-level fold, e.g. final norm into head, sees already-folded blocks) and checks that no foldable
norm is left.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from slab_edge.errors import SlabEdgeError
from slab_edge.layers.fold import fold_affine_into_linear_input, fold_affine_into_output, set_linear_or_conv
from slab_edge.layers.norms import NORM_TYPES, norm_affine


def is_folded(norm: nn.Module | None) -> bool:
    return norm is None or isinstance(norm, nn.Identity)


def absorb_into_following(norm: nn.Module, layer: nn.Linear) -> bool:
    """Fold an eval-affine norm into the Linear that reads its output. Returns False if already folded."""
    if is_folded(norm):
        return False
    affine = norm_affine(norm)
    if affine is None:
        raise TypeError(f"{type(norm).__name__} is not affine in eval mode and cannot be folded")
    weight, bias = fold_affine_into_linear_input(layer.weight, layer.bias, *affine)
    set_linear_or_conv(layer, weight, bias)
    return True


def absorb_into_preceding(layer: nn.Linear | nn.Conv2d, norm: nn.Module) -> bool:
    """Fold an eval-affine norm into the Linear/Conv whose output it normalizes (channel = output channel)."""
    if is_folded(norm):
        return False
    affine = norm_affine(norm)
    if affine is None:
        raise TypeError(f"{type(norm).__name__} is not affine in eval mode and cannot be folded")
    weight, bias = fold_affine_into_output(layer.weight, layer.bias, *affine)
    set_linear_or_conv(layer, weight, bias)
    return True


def remaining_norms(model: nn.Module) -> list[str]:
    """Names of top-level norm modules (a ProgressiveNorm counts once, not with its LN and BN inside)."""
    names: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, NORM_TYPES) and not any(name.startswith(n + ".") for n in names):
            names.append(name)
    return names


def norm_counts(model: nn.Module) -> dict[str, int]:
    """{norm type name: count} of the norms `remaining_norms` finds, e.g. {"LayerNorm": 9}."""
    counts: dict[str, int] = {}
    for name in remaining_norms(model):
        kind = type(model.get_submodule(name)).__name__
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def fold_metadata(deploy: nn.Module, trained: nn.Module | None = None) -> dict[str, Any]:
    """What a deploy file says about folding: {"folded", "unfolded_norms"[, "folded_norms"]}.

    Args:
        deploy: the model as written (folded, or as far as it folds).
        trained: the model before folding; gives "folded_norms", the number of norms folded away.

    "folded" is true only when no norm is left at all. Norms a model keeps by design (LayerNorm and RMSNorm
    have input-dependent statistics; a final norm without a head) are counted in "unfolded_norms" by type,
    so a LayerNorm model's deploy file says {"folded": false, "unfolded_norms": {"LayerNorm": 9}}.
    """
    left = norm_counts(deploy)
    out: dict[str, Any] = {"folded": not left, "unfolded_norms": left}
    if trained is not None:
        out["folded_norms"] = len(remaining_norms(trained)) - sum(left.values())
    return out


def describe_norms(counts: dict[str, int]) -> str:
    """{"LayerNorm": 9, "RMSNorm": 1} -> '9 LayerNorm, 1 RMSNorm'."""
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


def describe_fold(meta: dict[str, Any]) -> str:
    """'folded 9 norms' / 'folded 0 norms; left unfolded: 9 LayerNorm' from `fold_metadata`'s dict."""
    count = meta.get("folded_norms")
    text = "folded" if count is None else f"folded {count} norm{'' if count == 1 else 's'}"
    left = meta.get("unfolded_norms") or {}
    return f"{text}; left unfolded: {describe_norms(left)}" if left else text


class FoldCheckError(SlabEdgeError, RuntimeError):
    """A fold left a norm behind, or its parity cannot be measured."""


@torch.no_grad()
def reparameterize_model(model: nn.Module, check: bool = True) -> nn.Module:
    """Deploy copy of `model` with every foldable norm folded into its neighbour.

    Args:
        model: any module; blocks that own a norm and its absorbing layer implement `reparameterize()`.
        check: raise FoldCheckError if a norm is left that the model does not list in its
            `unfoldable_norms` attribute (names that are mathematically impossible to fold, with reasons
            documented by the model).
    """
    deploy = copy.deepcopy(model).eval()
    for module in reversed(list(deploy.modules())):
        fn = getattr(module, "reparameterize", None)
        if callable(fn):
            fn()
    if check:
        allowed = set(getattr(deploy, "unfoldable_norms", ()))
        left = [n for n in remaining_norms(deploy) if n not in allowed]
        if left:
            raise FoldCheckError(f"{type(model).__name__}: norms left unfolded: {', '.join(left[:8])}")
    deploy.is_reparameterized = True
    return deploy
