"""Native code of slab-edge: the fused SLA kernels behind the ONNX Runtime custom op, the TensorRT plugin and
the PyTorch CUDA path (torch-free: the on-device runtime imports this module).

Sources are shipped in `slab_edge/native/csrc/` (the C ABI every build shares: `sla_attention.h`); the
project's install compiles them (`slab_edge.native.build`). This module only names the contract and finds
the built libraries.

The fused operator in ONNX (one node per SLA core; inputs q, k [B, N, H, D] after the ReLU feature map and
v [B, N, H, Dv]; output [B, N, H, Dv]; see csrc/sla_attention.h for the maths):
    op_type OP_TYPE, domain OP_DOMAIN (opset OP_DOMAIN_VERSION),
    attributes eps (float), plugin_version (PLUGIN_VERSION), plugin_namespace (PLUGIN_NAMESPACE)
TensorRT's ONNX parser maps the node to the plugin of that name, version and namespace.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "LIBRARIES",
    "OP_DOMAIN",
    "OP_DOMAIN_VERSION",
    "OP_TYPE",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "OPS_DIR_ENV",
    "csrc_dir",
    "default_build_dir",
    "find_library",
]

OP_TYPE = "SlabLinearAttention"
OP_DOMAIN = "slab"
OP_DOMAIN_VERSION = 1
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "slab"

#: build target -> shared library file name
LIBRARIES = {
    "ort": "libslab_ort_ops.so",  # ONNX Runtime custom-op library, CPU kernel
    "ort-cuda": "libslab_ort_ops_cuda.so",  # ONNX Runtime custom-op library, CPU + CUDA kernels
    "torch-cuda": "libslab_sla_cuda.so",  # the C ABI of csrc/sla_attention.h, for PyTorch through ctypes
    "trt": "libslab_trt_plugin.so",  # TensorRT IPluginV3 plugin
}

#: environment variable naming a folder of built libraries (searched first)
OPS_DIR_ENV = "SLAB_EDGE_OPS_DIR"


def csrc_dir() -> Path:
    """The folder of the C++ / CUDA sources shipped with the package."""
    return Path(__file__).with_name("csrc")


def default_build_dir() -> Path:
    """Where the install writes the libraries: `slab_edge/native/lib` beside the sources."""
    return Path(__file__).with_name("lib")


def find_library(target: str) -> Path | None:
    """Path of the built library of `target` (a LIBRARIES key): $SLAB_EDGE_OPS_DIR first, then the default
    build folder. None when it is not built."""
    if target not in LIBRARIES:
        raise KeyError(f"unknown native target {target!r}; choose one of {', '.join(LIBRARIES)}")
    folders = [Path(os.environ[OPS_DIR_ENV])] if os.environ.get(OPS_DIR_ENV) else []
    folders.append(default_build_dir())
    for folder in folders:
        path = folder / LIBRARIES[target]
        if path.is_file():
            return path
    return None
