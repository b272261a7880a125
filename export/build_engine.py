#!/usr/bin/env python3
"""Build a TensorRT / TensorRT-RTX engine (+ sidecar JSON) from an ONNX file: same as `slab-edge build`.

    python export/build_engine.py digits.fp16.onnx                    # -> digits.fp16.engine (+ .json)
    python export/build_engine.py digits.onnx --precision fp16 --timing-cache trt.cache    # TensorRT 10
    python export/build_engine.py digits.fp16.onnx --dla-core 0 --gpu-fallback           # Jetson DLA

See export/README.md for the builder flavours and what CI can and cannot check.
"""

from __future__ import annotations

import sys

from slab_edge.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
