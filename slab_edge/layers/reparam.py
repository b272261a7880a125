"""The one re-parameterization protocol.

A module that owns a norm *and* the layer that absorbs it implements `reparameterize()`: in place,
idempotent (a second call finds Identity where the norm was and returns), eval-mode semantics.
`reparameterize_model(model)` deep-copies, switches to eval, calls every `reparameterize()` children-first
(so a model-level fold, e.g. final norm into head, sees already-folded blocks) and checks that no foldable
norm is left.
"""

from __future__ import annotations

import copy

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
