#!/usr/bin/env python3
"""Train a vision model: the same as `slab-edge train` (SLAB/DeiT recipe, progressive norm, exact resume).

    python models/train.py                                   # slab_deit_digits on the embedded digits
    python models/train.py --model slab_deit_tiny_patch16_224 --data /data/imagenet
    python models/train.py --resume runs/slab_deit_digits-digits
    torchrun --nproc_per_node 8 models/train.py --model slab_swin_tiny_patch4_224 --data /data/imagenet

See models/README.md for inputs, outputs and the multi-GPU / multi-node launch commands.
"""

from __future__ import annotations

import sys

from slab_edge.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
