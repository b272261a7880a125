#!/usr/bin/env python3
"""Benchmark one model, or two side by side (A/B interleaved): the same as `slab-edge bench` (torch-free).

    python3 runtime/benchmark.py model.engine --iters 500 --batch 1
    python3 runtime/benchmark.py slab.onnx deit.onnx --names slab deit --threads 4 --json --output ab.json

Fix the clocks first on a Jetson (sudo nvpmodel -m 0 && sudo jetson_clocks); see runtime/README.md.
"""

from __future__ import annotations

import sys

from slab_edge.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
