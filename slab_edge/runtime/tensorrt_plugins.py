"""TensorRT plugin libraries: check one, load it into TensorRT's plugin registry, describe it for the sidecar.

Used by the engine builder (before the ONNX parser runs) and by the TensorRT session (before the engine is
deserialized). A plugin library here is a shared library with the entry points TensorRT's
`IPluginRegistry.load_library` looks up for IPluginV3 creators (`getCreators`, `setLoggerFinder`), such as
slab-edge's own `libslab_trt_plugin.so` (SlabLinearAttention, see slab_edge/native). Libraries are loaded into
the process-wide registry (`trt.get_plugin_registry()`): the builder's and the runtime's registries search it.

Torch-free; ctypes checks a library before TensorRT sees it, so a wrong file is one clear line, not a TensorRT
log line.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slab_edge import native
from slab_edge.errors import BackendError

#: the C entry points IPluginRegistry::loadLibrary needs of an IPluginV3 plugin library
ENTRY_POINTS = ("getCreators", "setLoggerFinder")


@dataclass(frozen=True)
class PluginId:
    """A TensorRT plugin as the registry and the ONNX parser know it."""

    name: str
    version: str
    namespace: str

    def describe(self) -> str:
        return f"{self.namespace}::{self.name} v{self.version}"

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "namespace": self.namespace}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PluginId:
        return cls(str(data["name"]), str(data["version"]), str(data.get("namespace", "")))


#: what libslab_trt_plugin.so registers: the fused SLA core of the `slab` ONNX domain
SLA_PLUGIN = PluginId(native.OP_TYPE, native.PLUGIN_VERSION, native.PLUGIN_NAMESPACE)

#: TensorRT module -> resolved paths of the libraries this process loaded into its registry (TensorRT
#: refuses a second load_library of the same library)
_loaded: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_plugin_library(path: str | os.PathLike) -> Path:
    """The library's path, after checking that it exists, loads, and exports the plugin entry points.

    Raises:
        BackendError: a missing file, one the dynamic loader refuses (not a shared library, another CPU
            architecture, a missing dependency such as libcudart), or a library that is not a TensorRT plugin
            library.
    """
    path = Path(path)
    if not path.is_file():
        raise BackendError(f"TensorRT plugin library not found: {path}")
    try:
        library = ctypes.CDLL(str(path.resolve()))
    except OSError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BackendError(f"{path}: cannot be loaded as a shared library ({reason})") from None
    missing = [name for name in ENTRY_POINTS if not hasattr(library, name)]
    if missing:
        raise BackendError(
            f"{path} is not a TensorRT plugin library: it does not export {', '.join(missing)} "
            "(the entry points IPluginRegistry.load_library needs)"
        )
    return path


def registered(trt, plugin: PluginId) -> bool:
    """Whether `plugin` is in TensorRT's process-wide plugin registry."""
    return trt.get_plugin_registry().get_creator(plugin.name, plugin.version, plugin.namespace) is not None


def load_plugin_library(trt, path: str | os.PathLike, provides: tuple[PluginId, ...] = ()) -> bool:
    """Load a plugin library into TensorRT's registry unless this process loaded it already or the plugins
    it `provides` are registered already (TensorRT refuses to load a library twice). True when it loaded it.

    Raises:
        BackendError: the library fails `check_plugin_library`; TensorRT refuses it (built against another
            TensorRT, or its plugins clash with registered ones); or it loads without registering `provides`.
    """
    path = check_plugin_library(path)  # a wrong file is an error even when its plugins are registered
    done = _loaded.setdefault(trt, set())
    if str(path.resolve()) in done or (provides and all(registered(trt, p) for p in provides)):
        return False
    version = getattr(trt, "__version__", "?")
    if trt.get_plugin_registry().load_library(str(path)) is None:
        raise BackendError(
            f"TensorRT {version} refused plugin library {path} (see the TensorRT log above): built against "
            "another TensorRT, or its plugins are registered already; rebuild it on this machine "
            "(python3 -m slab_edge.native.build trt)"
        )
    done.add(str(path.resolve()))
    absent = [plugin.describe() for plugin in provides if not registered(trt, plugin)]
    if absent:
        raise BackendError(f"{path} loaded but does not register {', '.join(absent)}")
    return True


def describe_plugin_library(
    path: str | os.PathLike, provides: tuple[PluginId, ...], serialized_in_engine: bool
) -> dict[str, Any]:
    """The sidecar's record of a plugin library an engine needs."""
    path = Path(path)
    return {
        "library": path.name,
        "sha256": file_sha256(path),
        "plugins": [plugin.to_json() for plugin in provides],
        "serialized_in_engine": bool(serialized_in_engine),
    }


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_plugin_library(file_name: str, beside: Path | None = None) -> Path | None:
    """A plugin library by file name: beside the engine first, then where slab-edge's native builds go
    ($SLAB_EDGE_OPS_DIR, slab_edge/native/lib)."""
    if beside is not None and (beside / file_name).is_file():
        return beside / file_name
    for target, name in native.LIBRARIES.items():
        if name == file_name:
            return native.find_library(target)
    return None
