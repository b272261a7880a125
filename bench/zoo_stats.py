#!/usr/bin/env python3
"""Parameter counts and GMACs of the zoo at 224 next to the official numbers (REFERENCE.md §3).

    python bench/zoo_stats.py                       # DeiT, PVT, Swin and CSwin families
    python bench/zoo_stats.py --family swin cswin   # selected families
    python bench/zoo_stats.py --all --json runs/zoo_stats.json
    python bench/zoo_stats.py --models slab_deit_tiny_patch16_224 --size 384

Counting (no fvcore): parameters of the eval-mode model as built (progressive norms with both their
LayerNorm and RepBN parameters, like the official count) and of the folded deploy copy; multiply-adds from
torch.utils.flop_counter.FlopCounterMode on one image (FLOPs / 2: matmuls, linears, convolutions, SLA's
matmuls and its depthwise conv; softmax attention runs through SDPA's explicit-matmul path while counting
so its two matmuls are counted; elementwise ops and norms are not counted). Random weights, CPU, 1 thread;
takes ~1 minute for the 10 DeiT/PVT models. Not a timing benchmark.
"""

from __future__ import annotations

import argparse
import sys

#: REFERENCE.md §3: official builder -> (params M, GMACs) counted from the official code at 224
REFERENCE = {
    "slab_deit_t": (6.20, 1.14),
    "slab_deit_s": (22.99, 4.36),
    "deit_t_prepbn": (5.72, 1.25),
    "deit_s_prepbn": (22.07, 4.60),
    "pvt_t_prepbn": (13.24, 1.93),
    "pvt_s_prepbn": (24.51, 3.81),
    "pvt_m_prepbn": (44.25, 6.65),
    "slab_pvt_t": (12.16, 2.04),
    "slab_pvt_s": (21.68, 4.03),
    "slab_pvt_m": (37.27, 7.03),
    "swin_t_prepbn": (28.29, 4.49),
    "slab_swin_t": (29.22, 4.48),
    "slab_swin_s": (50.55, 8.73),
    "slab_swin_b": (89.03, 15.42),
    "slab_cswin_t": (21.23, 4.32),
    "slab_cswin_s": (35.49, 6.78),
}


def count(name: str, size: int) -> dict:
    """Params (M) unfolded and folded, GMACs at `size` for one registered model."""
    import timm
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from slab_edge.layers.reparam import reparameterize_model

    kwargs = {"img_size": size} if size != 224 else {}
    model = timm.create_model(name, **kwargs).eval()
    params = sum(p.numel() for p in model.parameters())
    folded = sum(p.numel() for p in reparameterize_model(model).parameters())
    x = torch.randn(1, *model.pretrained_cfg["input_size"][:1], size, size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(x)
    return {
        "params_m": params / 1e6,
        "params_folded_m": folded / 1e6,
        "gmacs": counter.get_total_flops() / 2e9,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--family", nargs="+", default=["deit", "pvt", "swin", "cswin"], help="model family modules"
    )
    parser.add_argument("--all", action="store_true", help="every registered slab-edge model")
    parser.add_argument("--models", nargs="+", help="explicit timm names (overrides --family)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--include-unofficial", action="store_true", help="also the digits models")
    parser.add_argument("--json", help="also write the table as JSON to this path")
    args = parser.parse_args(argv)

    import torch

    import slab_edge  # noqa: F401  registers the zoo
    from slab_edge.models import OFFICIAL_NAMES, list_models

    torch.set_num_threads(1)
    official_of = {timm_name: official for official, timm_name in OFFICIAL_NAMES.items()}
    if args.models:
        names = args.models
    else:
        families = None if args.all else set(args.family)
        names = [
            n
            for n in list_models()
            if (args.include_unofficial or n in official_of) and (families is None or _family(n) in families)
        ]
    rows = []
    print(f"{'model':34s} {'official':14s} {'params M':>9s} {'ref M':>7s} {'d%':>6s} "
          f"{'GMACs':>7s} {'ref':>6s} {'d%':>6s} {'folded M':>9s}")  # fmt: skip
    for name in names:
        stats = count(name, args.size)
        official = official_of.get(name, "-")
        ref_params, ref_gmacs = REFERENCE.get(official, (None, None))
        row = {
            "model": name,
            "official": official,
            **stats,
            "ref_params_m": ref_params,
            "ref_gmacs": ref_gmacs,
        }
        if ref_params is not None and args.size == 224:
            row["params_diff_pct"] = 100 * (stats["params_m"] / ref_params - 1)
            row["gmacs_diff_pct"] = 100 * (stats["gmacs"] / ref_gmacs - 1)
        rows.append(row)
        print(
            f"{name:34s} {official:14s} {stats['params_m']:9.2f} {_fmt(ref_params, 7)} "
            f"{_fmt(row.get('params_diff_pct'), 6, '+.2f')} {stats['gmacs']:7.3f} {_fmt(ref_gmacs, 6)} "
            f"{_fmt(row.get('gmacs_diff_pct'), 6, '+.1f')} {stats['params_folded_m']:9.2f}",
            flush=True,
        )
    if args.json:
        from slab_edge.io import atomic_write_json

        atomic_write_json(args.json, {"size": args.size, "rows": rows})
    return 0


def _family(name: str) -> str:
    """'deit' for a model registered in slab_edge/models/deit.py, etc."""
    import timm

    return timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]


def _fmt(value, width: int, spec: str = ".2f") -> str:
    sign, spec = ("+", spec[1:]) if spec.startswith("+") else ("", spec)
    return f"{value:{sign}{width}{spec}}" if value is not None else " " * (width - 1) + "-"


if __name__ == "__main__":
    sys.exit(main())
