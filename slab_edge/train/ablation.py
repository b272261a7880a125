"""The norm/attention ablation on one recipe: LayerNorm vs PRepBN vs PRepBN + SLA (SLAB's claim: PRepBN
lands within ~1 point of LayerNorm, and SLA keeps it there).

    slab-edge train --ablation                          # slab_deit_digits backbone on digits
    slab-edge train --ablation --epochs 20 --output runs/ablation

Each variant trains the same backbone with builder kwargs from `ABLATION_VARIANTS` in its own run folder
(`<output>/<variant>`); LayerNorm cannot be folded, so only the BatchNorm variants write deploy files.
A table is printed and written to `<output>/ablation.json`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from slab_edge.io import atomic_write_json

__all__ = ["ABLATION_VARIANTS", "run_ablation"]

#: variant name -> builder kwargs (the zoo's SLAB-DeiT models accept attn_type and norm_type)
ABLATION_VARIANTS: dict[str, dict[str, str]] = {
    "layernorm": {"attn_type": "softmax", "norm_type": "layernorm"},
    "prepbn": {"attn_type": "softmax", "norm_type": "prepbn"},
    "prepbn+sla": {"attn_type": "sla", "norm_type": "prepbn"},
}


def run_ablation(cfg, variants: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Train every variant of `cfg.model` with `cfg`'s recipe; returns one result row per variant."""
    from slab_edge.train.vision import default_run_dir, train_vision

    variants = variants or ABLATION_VARIANTS
    root = (
        Path(cfg.output)
        if cfg.output
        else default_run_dir(cfg).with_name(default_run_dir(cfg).name + "-ablation")
    )
    rows = []
    for name, kwargs in variants.items():
        variant_cfg = dataclasses.replace(
            cfg,
            model_kwargs={**cfg.model_kwargs, **kwargs},
            output=str(root / name.replace("+", "_")),
            overwrite=True,
            deploy=cfg.deploy and kwargs.get("norm_type") != "layernorm",
        )
        print(f"\n=== ablation variant {name}: {kwargs} ===", flush=True)
        result = train_vision(variant_cfg)
        rows.append(
            {
                "variant": name,
                "model_kwargs": variant_cfg.model_kwargs,
                "acc": result.final_eval.get("acc"),
                "best_acc": result.best_acc,
                "deploy_acc": result.deploy_eval.get("acc"),
                "train_seconds": round(result.train_seconds, 1),
                "steps": result.steps,
                "run_dir": str(result.run_dir),
            }
        )
    atomic_write_json(root / "ablation.json", {"model": cfg.model, "data": cfg.data, "rows": rows})
    print(f"\nablation of {cfg.model} on {cfg.data} ({rows[0]['steps'] if rows else 0} steps each):")
    print(f"{'variant':<12} {'top-1 %':>8} {'best %':>8} {'folded %':>9} {'train s':>8}")
    for r in rows:
        folded = f"{r['deploy_acc']:.2f}" if r["deploy_acc"] is not None else "n/a"
        acc, best, secs = r["acc"], r["best_acc"], r["train_seconds"]
        print(f"{r['variant']:<12} {acc:>8.2f} {best:>8.2f} {folded:>9} {secs:>8.1f}")
    print(f"(written to {root / 'ablation.json'})")
    return rows
