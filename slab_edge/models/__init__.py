"""The SLAB model zoo, registered in timm on import, and SLAB-LM.

timm names (official builder name in brackets):
    slab_deit_tiny_patch16_224 [slab_deit_t]        slab_deit_small_patch16_224 [slab_deit_s]
    deit_tiny_prepbn_patch16_224 [deit_t_prepbn]    deit_small_prepbn_patch16_224 [deit_s_prepbn]
    slab_pvt_tiny / small / medium [slab_pvt_t/s/m] pvt_tiny/small/medium_prepbn [pvt_t/s/m_prepbn]
    slab_swin_tiny/small/base_patch4_224 [slab_swin_t/s/b]
    swin_tiny_prepbn_patch4_window7_224 [swin_t_prepbn]
    slab_cswin_tiny/small_224 [slab_cswin_t/s]
    slab_deit_digits, deit_digits (small SLAB-DeiT / softmax+LayerNorm DeiT for the embedded 32x32 digits;
        not official models)
"""

from __future__ import annotations

import difflib

from slab_edge.errors import InputError
from slab_edge.models._registry import OFFICIAL_NAMES, SLAB_MODELS, register_slab_model

# Importing the family modules registers their models with timm.
from slab_edge.models import cswin, deit, pvt, swin  # noqa: E402,F401  isort: skip

__all__ = ["OFFICIAL_NAMES", "create_model", "list_models", "register_slab_model", "resolve_model_name"]


def list_models() -> list[str]:
    """Every registered slab-edge vision model name, sorted."""
    return sorted(SLAB_MODELS)


def resolve_model_name(name: str) -> str:
    """timm name for `name` (an official builder name is accepted); unknown names raise InputError."""
    if name in SLAB_MODELS:
        return name
    if name in OFFICIAL_NAMES:
        return OFFICIAL_NAMES[name]
    close = difflib.get_close_matches(name, list(SLAB_MODELS) + list(OFFICIAL_NAMES), n=5, cutoff=0.4)
    hint = f"; closest: {', '.join(close)}" if close else f"; registered: {', '.join(list_models())}"
    raise InputError(f"unknown model {name!r}{hint}")


def create_model(name: str, **kwargs):
    """timm.create_model for a slab-edge model, with a clear error listing close names for a typo."""
    import timm

    return timm.create_model(resolve_model_name(name), **kwargs)
