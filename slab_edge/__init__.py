"""slab-edge: train, fold, export and run SLAB-style efficient transformers on edge devices.

Importing this package never imports torch: the on-device runtime (`slab_edge.runtime`) must work where
torch is absent. The model zoo registers itself with timm the moment timm is imported (before or after
this package), so `import slab_edge; timm.create_model("slab_deit_tiny_patch16_224")` works.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_LAZY = {
    "reparameterize_model": "slab_edge.layers.reparam",
    "create_model": "slab_edge.models",
    "list_models": "slab_edge.models",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slab_edge' has no attribute {name!r}")


def _register_zoo() -> None:
    importlib.import_module("slab_edge.models")


class _TimmImportHook(importlib.abc.MetaPathFinder):
    """Registers the zoo right after `timm` finishes importing, so no torch import happens before that."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            _register_zoo()

        loader.exec_module = exec_and_register
        return spec


if "timm" in sys.modules:
    _register_zoo()
elif not any(isinstance(f, _TimmImportHook) for f in sys.meta_path):
    sys.meta_path.insert(0, _TimmImportHook())
