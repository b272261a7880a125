#!/usr/bin/env python3
"""Export a model (+ checkpoint) to ONNX: the same code and flags as `slab-edge export`.

    python export/export_onnx.py -c runs/slab_deit_digits-digits -o digits.onnx --precision fp32 fp16 int8 \\
        --calib-data digits
    python export/export_onnx.py slab_deit_tiny_patch16_224 -c deploy.safetensors -o tiny.onnx

See export/README.md for inputs, outputs and what each check means.
"""

from __future__ import annotations

import sys

from slab_edge.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
