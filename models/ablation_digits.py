#!/usr/bin/env python3
"""LayerNorm vs PRepBN vs PRepBN + SLA on the digits recipe: the same as `slab-edge train --ablation`.

    python models/ablation_digits.py                         # slab_deit_digits backbone, digits recipe
    python models/ablation_digits.py --epochs 10 --threads 1 --output runs/ablation

Prints a table of held-out top-1 per variant and writes <output>/ablation.json.
"""

from __future__ import annotations

import sys

from slab_edge.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "--ablation", *sys.argv[1:]]))
