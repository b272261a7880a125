"""Assertions shared by the test suite (imports torch; not part of the torch-free runtime)."""

from __future__ import annotations

import torch
from torch import nn


def assert_rel_close(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str = "", floor: float = 1e-30
) -> None:
    """max |actual - expected| <= rtol * max(max |expected|, floor): errors relative to magnitude.

    `expected` is cast to `actual`'s dtype first; non-finite values in `actual` fail.
    """
    expected = expected.to(actual.dtype)
    scale = expected.abs().max().clamp(min=floor)
    err = (actual - expected).abs().max()
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol:g} x magnitude {scale:.3g}"


@torch.no_grad()
def randomize_norm_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """In place: BN running_mean U(-.5,.5), running_var U(.5,2), weight U(.5,1.5), bias U(-.2,.2);
    RepBN alpha U(.5,1.5). Returns the model. Default statistics (mean 0, var 1) hide fold bugs."""
    from slab_edge.layers.norms import RepBN

    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            c = module.num_features
            module.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            module.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            if module.weight is not None:
                module.weight.copy_(torch.rand(c, generator=g) + 0.5)
                module.bias.copy_((torch.rand(c, generator=g) - 0.5) * 0.4)
        elif isinstance(module, RepBN):
            module.alpha.copy_(torch.rand(1, generator=g) + 0.5)
    return model


@torch.no_grad()
def randomize_parameters(module: nn.Module, std: float = 0.3) -> nn.Module:
    """Draw every parameter (biases and norm weights included) from N(0, std), in place, from torch's
    global generator: layer tests then exercise every term, not the init's zeros and ones. Returns module."""
    for p in module.parameters():
        p.normal_(0, std)
    return module


#: SLAB-LM config overrides the decode tests run: each attention alone, and the 3:1 hybrids
#: (attention_pattern: recurrent states beside a KV cache)
LM_ATTENTION_CASES: dict[str, dict] = {
    "sla": {"attention": "sla"},
    "gla": {"attention": "gla"},
    "softmax": {"attention": "softmax"},
    "sla-LLLS": {"attention": "sla", "attention_pattern": "LLLS", "num_layers": 4},
    "gla-LLLS": {"attention": "gla", "attention_pattern": "LLLS", "num_layers": 4},
}
