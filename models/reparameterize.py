#!/usr/bin/env python3
"""Fold every norm of a trained model into its neighbour and write a deploy checkpoint: `slab-edge fold`.

    python models/reparameterize.py --checkpoint runs/x --output runs/x/deploy.safetensors --data digits
    python models/reparameterize.py --recalibrate --checkpoint runs/x --output runs/x/recal.safetensors

With --recalibrate it runs `slab-edge recalibrate` instead (refresh BN statistics with frozen weights,
the step that belongs before folding). See models/README.md.
"""

from __future__ import annotations

import sys

from slab_edge.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    command = "fold"
    if "--recalibrate" in argv:
        argv.remove("--recalibrate")
        command = "recalibrate"
    sys.exit(main([command, *argv]))
