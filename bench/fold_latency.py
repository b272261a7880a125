"""What folding buys in PyTorch: CPU latency before vs after `reparameterize_model` (issue 2).

torch eager, batch 1, `--threads` (2) intra-op threads, eval mode, no autograd; the unfolded and folded copies
of each model are timed interleaved (A B A B ...) in one process after a warm-up, and medians are compared.
BatchNorm statistics and affine parameters are randomized first so the folded graph does real work.

    python bench/fold_latency.py --out runs/bench-fold.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

MODELS = ("slab_deit_tiny_patch16_224", "deit_tiny_prepbn_patch16_224")


def time_interleaved(fns: dict, iters: int, warmup: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(iters):
        order = list(fns) if i % 2 == 0 else list(reversed(fns))
        for key in order:
            start = time.perf_counter()
            fns[key]()
            times[key].append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import timm
    import torch

    import slab_edge  # noqa: F401  (registers the zoo)
    from slab_edge.layers.reparam import remaining_norms, reparameterize_model
    from slab_edge.testing import randomize_norm_statistics

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    x = torch.randn(1, 3, 224, 224)
    rows = []
    for name in args.models:
        model = timm.create_model(name).eval()
        randomize_norm_statistics(model)
        folded = reparameterize_model(model)
        with torch.inference_mode():
            diff = (model(x) - folded(x)).abs().max().item()
            scale = model(x).abs().max().item()

            def run(m):
                return lambda: m(x)

            times = time_interleaved({"unfolded": run(model), "folded": run(folded)}, args.iters, args.warmup)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(
            {
                "model": name,
                "unfolded_ms": med["unfolded"],
                "folded_ms": med["folded"],
                "folded_over_unfolded": med["folded"] / med["unfolded"],
                "norms_left": len(remaining_norms(folded)),
                "max_abs_logit_diff": diff,
                "max_abs_logit": scale,
            }
        )
        print(
            f"{name:32s} unfolded {med['unfolded']:7.2f} ms  folded {med['folded']:7.2f} ms  "
            f"ratio {med['folded'] / med['unfolded']:.3f}  parity {diff:.2e} (max|logit| {scale:.2f})"
        )
    result = {
        "torch": torch.__version__,
        "threads": args.threads,
        "iters": args.iters,
        "batch": 1,
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg()[0],
        "rows": rows,
    }
    if args.out:
        from slab_edge.io import atomic_write_json

        atomic_write_json(Path(args.out), result)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


if __name__ == "__main__":
    main()
