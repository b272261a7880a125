"""Assertions shared by the test suite (imports torch; not part of the torch-free runtime)."""

from __future__ import annotations

import torch


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
