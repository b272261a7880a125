"""`slab-edge build-ops`: compile the native SLA libraries (the same command as `python -m
slab_edge.native.build`).

    slab-edge build-ops ort                         # ONNX Runtime CPU custom ops (make venv does this)
    slab-edge build-ops ort-cuda torch-cuda         # on a CUDA machine: for the local GPU
    slab-edge build-ops trt --cuda-arch 87          # Jetson, with JetPack's TensorRT headers:
                                                    #   SLAB_EDGE_TRT_INCLUDE=/usr/include/aarch64-linux-gnu
    slab-edge build-ops ort-cuda trt --compile-only # CI without a GPU: compile, link, check entry points
"""

from __future__ import annotations

from slab_edge.native.build import add_arguments, run

__all__ = ["add_arguments", "run"]
