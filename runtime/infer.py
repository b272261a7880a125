#!/usr/bin/env python3
"""Classify images on the device: the same as `slab-edge infer` (torch-free).

    python3 runtime/infer.py model.onnx photos/ --top-k 3
    python3 runtime/infer.py model.engine 'photos/**/*.jpg' --batch 8 --json --output results.json
    python3 runtime/infer.py model.onnx cat.jpg --provider cuda

Needs the slab-edge wheel (`pip install slab-edge[onnx]` or `[trt]`); see runtime/README.md.
"""

from __future__ import annotations

import sys

from slab_edge.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
