"""Bookkeeping for the zoo: which timm names are ours, and the official SLAB builder names."""

from __future__ import annotations

from timm.models import register_model

SLAB_MODELS: set[str] = set()

#: official SLAB builder name -> timm name
OFFICIAL_NAMES: dict[str, str] = {}


def register_slab_model(fn=None, *, official: str | None = None):
    """timm's @register_model, also recording the name as a slab-edge model (and its official alias)."""

    def wrap(f):
        SLAB_MODELS.add(f.__name__)
        if official:
            OFFICIAL_NAMES[official] = f.__name__
        return register_model(f)

    return wrap(fn) if fn is not None else wrap
