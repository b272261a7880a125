#!/usr/bin/env python3
"""Where SLA's training time goes as T grows at fixed tokens per step: its pieces timed alone (fwd + bwd).

slab-lm-350m trained with SLA falls from 0.81x softmax's tokens/s at T = 2k to 0.54x at 16k on the H200, while
GLA (same fla kernel family) stays flat (bench/README.md). This script times each piece of the causal SLA
token mixer alone at slab-lm-350m's shape (C 1024, 8 heads of 128), bf16 inputs, B * T = 16,384 tokens:

  numerator          fla chunk_linear_attn(normalize=False) (or our PyTorch chunk form without fla)
  normalizer         causal_normalizer: key cumsum along the innermost axis of a transposed copy (current)
  normalizer_outer   the same sum along T in place (the form the H200 run used): CUDA scans an outer axis
                     with one thread per column
  causal_conv        causal_conv1d: depthwise Conv1d (W 4) over time on v
  fla_causal_conv    fla's Triton causal_conv1d on the same input (with fla only), and its max |diff| to ours
  layer              the whole CausalSimplifiedLinearAttention (qkv, the above, proj)
  gla_layer          GatedLinearAttention at the same width, for comparison

Per piece and T: median ms of --iters CUDA-synchronised fwd + bwd runs after --warmup. A piece whose time
grows with T at fixed B * T is the culprit.

    python3 bench/sla_pieces_gpu.py --out $OUT/sla_pieces.json          # GPU machine, fla staged (~2-4 min)
    python bench/sla_pieces_gpu.py --smoke --device cpu                 # pipeline check
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def outer_axis_normalizer(q, k, eps: float):
    """The pre-change denominator: cumsum along T (dim 1 of [B, T, H, K]) in place."""
    z = k.float().cumsum(1)
    return (q.float() * z).sum(-1, keepdim=True) + eps, z[:, -1].clone()


def time_fwd_bwd(fn, inputs, device, iters: int, warmup: int) -> float:
    """Median ms of fn(*inputs) forward + backward of the sum of its tensor outputs."""
    import torch

    def once():
        leaves = [x.detach().requires_grad_(x.is_floating_point()) for x in inputs]
        out = fn(*leaves)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        loss = sum(o.float().sum() for o in outs if isinstance(o, torch.Tensor) and o.requires_grad)
        loss.backward()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        once()
    times = []
    for _ in range(iters):
        sync()
        start = time.perf_counter()
        once()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--tokens", type=int, default=16384, help="B * T at every length")
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 16384])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="dim 64, 2 heads, T 64/128, 2 iterations")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.smoke:
        args.dim, args.heads, args.tokens, args.lengths, args.iters, args.warmup = 64, 2, 256, [64, 128], 2, 1

    import torch

    from slab_edge.layers.causal_sla import CausalSimplifiedLinearAttention
    from slab_edge.layers.gla import GatedLinearAttention
    from slab_edge.ops.backend import resolve_mode
    from slab_edge.ops.causal_sla import (
        CAUSAL_SLA_EPS,
        causal_conv1d,
        causal_linear_attn_chunk,
        causal_linear_attn_fla,
        causal_normalizer,
    )

    device = torch.device(args.device)
    dtype = torch.bfloat16
    heads, d = args.heads, args.dim // args.heads
    probe = torch.empty(1, device=device)
    mode = resolve_mode("auto", probe)
    numerator = causal_linear_attn_fla if mode == "fla" else causal_linear_attn_chunk
    sla = CausalSimplifiedLinearAttention(args.dim, heads).to(device)
    gla = GatedLinearAttention(args.dim, num_heads=4).to(device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = {"device": device_name, "backend": mode, "dim": args.dim, "heads": heads, "rows": []}
    results["tokens"] = args.tokens
    for length in args.lengths:
        batch = max(args.tokens // length, 1)
        gen = torch.Generator(device="cpu").manual_seed(length)
        q, k = (torch.rand(batch, length, heads, d, generator=gen).to(device, dtype) for _ in range(2))
        v = torch.randn(batch, length, heads, d, generator=gen).to(device, dtype)
        x = torch.randn(batch, length, args.dim, generator=gen).to(device, dtype)
        pieces = {
            "numerator": (lambda q, k, v: numerator(q, k, v)[0], (q, k, v)),
            "normalizer": (lambda q, k: causal_normalizer(q, k, None, CAUSAL_SLA_EPS), (q, k)),
            "normalizer_outer": (lambda q, k: outer_axis_normalizer(q, k, CAUSAL_SLA_EPS), (q, k)),
            "causal_conv": (
                lambda x: causal_conv1d(x, sla.dwc.weight.to(dtype), sla.dwc.bias.to(dtype))[0],
                (x,),
            ),
        }
        if mode == "fla":
            # fla's Triton causal conv ([B, T, D] in place, weight [D, W]): a candidate replacement
            from fla.modules.causal_conv1d import causal_conv1d as fla_causal_conv1d

            pieces["fla_causal_conv"] = (
                lambda x: fla_causal_conv1d(
                    x, sla.dwc.weight.to(dtype).reshape(args.dim, -1), sla.dwc.bias.to(dtype)
                )[0],
                (x,),
            )
        row = {"length": length, "batch": batch}
        if "fla_causal_conv" in pieces:
            with torch.no_grad():
                ours = pieces["causal_conv"][0](x).float()
                theirs = pieces["fla_causal_conv"][0](x).float()
            row["fla_conv_max_abs_diff"] = float((ours - theirs).abs().max())
        for name, (fn, inputs) in pieces.items():
            row[name] = time_fwd_bwd(fn, inputs, device, args.iters, args.warmup)
        with torch.autocast(device_type=device.type, dtype=dtype):
            row["layer"] = time_fwd_bwd(lambda x: sla(x)[0], (x,), device, args.iters, args.warmup)
            row["gla_layer"] = time_fwd_bwd(lambda x: gla(x)[0], (x,), device, args.iters, args.warmup)
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
    names = [n for n in results["rows"][0] if n not in ("length", "batch", "fla_conv_max_abs_diff")]
    print(f"causal SLA pieces, fwd + bwd median ms, {args.tokens} tokens, C {args.dim}, {heads} heads, "
          f"backend {mode}, {results['device']}")  # fmt: skip
    print(f"{'T':>6} {'B':>3} " + " ".join(f"{n:>16}" for n in names))
    for r in results["rows"]:
        print(f"{r['length']:>6} {r['batch']:>3} " + " ".join(f"{r[n]:>16.3f}" for n in names))
    if args.out:
        from slab_edge.io import atomic_write_json

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
