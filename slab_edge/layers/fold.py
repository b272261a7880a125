"""Pure fusion maths for re-parameterization. Every function returns new (weight, bias) tensors.

A per-channel affine map y = scale * x + shift is what every eval-mode BatchNorm / RepBN becomes; it folds
into the Linear or Conv that reads it (input side) or writes it (output side). Folding is done in float64
and cast back, so the folded model matches the unfolded one to float32 rounding.
"""

from __future__ import annotations

import torch
from torch import nn


def batchnorm_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as (scale, shift), each [C], float64."""
    inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(inv_std)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(inv_std)
    scale = weight * inv_std
    return scale, bias - bn.running_mean.double() * scale


def repbn_affine(
    bn: nn.modules.batchnorm._BatchNorm, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode RepBN, BN(x) + alpha * x, as (scale, shift), each [C], float64."""
    scale, shift = batchnorm_affine(bn)
    return scale + alpha.double(), shift


def fold_affine_into_linear_input(
    weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor, shift: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear(scale * x + shift): W' = W diag(scale), c' = W shift + c.

    Args:
        weight: [out, in]; bias: [out] or None; scale, shift: [in].
    """
    w = weight.double()
    new_bias = w @ shift.double()
    if bias is not None:
        new_bias = new_bias + bias.double()
    return (w * scale.double()[None, :]).to(weight.dtype), new_bias.to(weight.dtype)


def fold_affine_into_output(
    weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor, shift: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """scale * (Linear or Conv output) + shift: W' = scale (.) W per output channel, c' = scale * c + shift.

    Args:
        weight: [out, ...] (Linear [out, in] or Conv [out, in/groups, *k]); bias: [out] or None;
        scale, shift: [out].
    """
    w = weight.double()
    s = scale.double()
    new_bias = shift.double() + (s * bias.double() if bias is not None else 0.0)
    new_w = w * s.reshape(-1, *([1] * (w.dim() - 1)))
    return new_w.to(weight.dtype), new_bias.to(weight.dtype)


def linear_with(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """A fresh nn.Linear holding the given folded parameters (bias always present)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=True, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


def set_linear_or_conv(layer: nn.Linear | nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Overwrite a Linear/Conv's parameters in place, creating the bias if the layer had none."""
    with torch.no_grad():
        layer.weight.copy_(weight)
        if layer.bias is None:
            layer.bias = nn.Parameter(bias.clone())
        else:
            layer.bias.copy_(bias)
