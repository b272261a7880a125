#!/usr/bin/env python3
"""Where SLA's training time goes as T grows at fixed tokens per step: its pieces timed alone (fwd + bwd).

slab-lm-350m trained with SLA fell from 0.81x softmax's tokens/s at T = 2k to 0.54x at 16k on an H200 while
GLA (same fla kernel family) stayed flat; this script found why (the normalizer's scan; bench/README.md).
It times each piece of the causal SLA token mixer alone at slab-lm-350m's shape (C 1024, 8 heads of 128), bf16
inputs, B * T = 16,384 tokens:

  numerator          fla chunk_linear_attn(normalize=False) (or our PyTorch chunk form without fla)
  normalizer_triton  ops.causal_sla_triton.causal_normalizer_triton: chunk-parallel Triton kernels (the fla
                     path since session 5; CUDA only)
  normalizer_fla     scan_normalizer: fla's single-pass Triton scan along T, hand-written backward
                     (sessions 3-4)
  normalizer_chunked candidate: the same with chunked_time_scan (chunk-parallel) as the scan
  normalizer         causal_normalizer, the PyTorch form: cumsum along the innermost axis of a transposed copy
  normalizer_outer   the same sum along T in place (the first H200 run's form): CUDA scans an outer axis
                     with one thread per column
  causal_conv        causal_conv1d: cuDNN depthwise Conv1d (W 4) over time on v, as [B, C, T]
  conv_shifts        candidate: sum of W shifted products in [B, T, C], eager
  conv_fused         candidate: the same under torch.compile (CUDA only: compiling on a CPU is slow)
  conv_padded        candidate: causal_conv with padding=W-1 in the conv, not a concatenated zero history
  fla_causal_conv    ops.causal_conv1d_fla: fla's Triton causal_conv1d (the fla path's conv since session 5)
  layer              the whole CausalSimplifiedLinearAttention (qkv, the above, proj)
  gla_layer          GatedLinearAttention at the same width, for comparison

Each conv's max |diff| to causal_conv is reported as <name>_max_abs_diff. Per piece and T: median ms of
--iters CUDA-synchronised fwd + bwd runs after --warmup. A piece whose time grows with T at fixed B * T
scales badly. Caveat: each timed run also pays the host's launch and autograd overhead (~1 ms here), so
pieces of well under 1 ms of kernel time look alike; `lm_train_gpu.py --profile 2` gives kernel times.

    python3 bench/sla_pieces_gpu.py --out $OUT/sla_pieces.json          # GPU machine, fla staged (~3-5 min;
                                                                        # compile fla first, alone: DEVICE.md)
    python bench/sla_pieces_gpu.py --smoke --device cpu                 # pipeline check
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path


def outer_axis_normalizer(q, k, eps: float):
    """The pre-change denominator: cumsum along T (dim 1 of [B, T, H, K]) in place."""
    z = k.float().cumsum(1)
    return (q.float() * z).sum(-1, keepdim=True) + eps, z[:, -1].clone()


# The fla path's normalizer of sessions 3-4 (replaced in session 5, kept as the baseline for A/B runs):
# fla's single-pass chunk_global_cumsum writes z_t = sum_{s<=t} k_s as float32 [B, T, H, K] and reads it back.


def fla_time_scan(x, reverse: bool = False):
    """time_scan through fla's chunk_global_cumsum (Triton, float32 out, any input dtype)."""
    import torch
    from fla.ops.utils import chunk_global_cumsum

    return chunk_global_cumsum(x, reverse=reverse, output_dtype=torch.promote_types(x.dtype, torch.float32))


def scan_normalizer(q, k, z0, eps: float, scan=None):
    """ops.causal_normalizer with a scan along T and a hand-written backward (one reverse scan, no float32
    copy of k, no [B, H, K, T] transposes). Same arguments and returns; scan(x, reverse) defaults to
    fla_time_scan (the sessions 3-4 form); tests pass time_scan or chunked_time_scan to run it on a CPU."""
    qz, z_last = _key_sum_dot().apply(q, k, scan or fla_time_scan)
    if z0 is not None:
        z0 = z0.to(qz.dtype)
        qz = qz + (q.to(qz.dtype) * z0.unsqueeze(1)).sum(-1, keepdim=True)
        z_last = z_last + z0
    return qz + eps, z_last


def scan_divide_by_normalizer(num, q, k, z0, eps: float, out_dtype):
    """The fla path's division of sessions 3-4 (now ops.causal_sla_triton.divide_by_normalizer_triton):
    num / scan_normalizer's denominator, float32."""
    den, z_last = scan_normalizer(q, k, z0, eps)
    return (num.float() / den).to(out_dtype), z_last


@functools.cache
def _key_sum_dot():
    """(q . z_t [B, T, H, 1], z_T [B, H, K]) with z_t = sum_{s<=t} k_s, for q, k [B, T, H, K], via scan(), as
    an autograd Function (built on first use: this script imports torch lazily). Backward: dq_t = dqz_t z_t;
    dk_s = sum_{t>=s} dqz_t q_t (+ dz_T), one reverse scan. Saves q and z."""
    import torch

    class KeySumDot(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, scan):
            z = scan(k, False)  # [B, T, H, K]
            ctx.save_for_backward(q, z)
            ctx.scan, ctx.k_dtype = scan, k.dtype
            return (q.to(z.dtype) * z).sum(-1, keepdim=True), z[:, -1]

        @staticmethod
        def backward(ctx, dqz, dz_last):
            q, z = ctx.saved_tensors
            dq = (dqz * z).to(q.dtype)
            dz = dqz * q.to(z.dtype)  # [B, T, H, K]: the gradient reaching each running sum z_t
            dz[:, -1] += dz_last
            return dq, ctx.scan(dz, True).to(ctx.k_dtype), None

    return KeySumDot


def chunked_time_scan(x, reverse: bool = False, chunk: int = 64):
    """Candidate key scan: time_scan computed chunk-parallel (a scan inside each chunk, then chunk totals).

    x [B, T, H, K] (any T) -> inclusive prefix sums along T (reverse: suffix sums) in float32 (float64 stays).
    Every (chunk, channel) pair is an independent `chunk`-step scan, so a long sequence with batch 1 still
    fills the GPU; fla's chunk_global_cumsum (the current scan) is parallel over B * H * K-blocks only.
    """
    import torch
    import torch.nn.functional as F

    b, t, h, d = x.shape
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    n = -(-t // chunk)
    if n * chunk != t:
        x = F.pad(x, (0, 0, 0, 0, 0, n * chunk - t))  # trailing zeros change neither prefix nor suffix sums
    xc = x.reshape(b, n, chunk, h, d)
    local = xc.cumsum(2)  # prefix sums inside each chunk
    totals = local[:, :, -1]  # [B, N, H, K]
    if reverse:
        # suffix inside a chunk = x - prefix + chunk total; the later chunks' totals join the chunk's own
        z = (xc - local) + totals.flip(1).cumsum(1).flip(1).unsqueeze(2)
    else:
        z = local + (totals.cumsum(1) - totals).unsqueeze(2)
    return z.reshape(b, n * chunk, h, d)[:, :t]


def conv_shifts(x, weight, bias=None):
    """Candidate conv maths: causal_conv1d from zero history as W shifted multiply-adds in [B, T, C].

    x [B, T, C], weight [C, 1, W] or [C, W], bias [C] or None -> y [B, T, C]; no conv kernel, no transposes.
    """
    import torch.nn.functional as F

    t, ch = x.shape[1:]
    w = weight.reshape(ch, -1).to(x.dtype)  # [C, W]
    width = w.shape[-1]
    padded = F.pad(x, (0, 0, width - 1, 0))  # [B, W-1+T, C]: zero history
    y = padded[:, width - 1 :] * w[:, width - 1]
    for i in range(width - 1):
        y = y + padded[:, i : i + t] * w[:, i]
    return y if bias is None else y + bias.to(x.dtype)


@functools.cache
def compiled_conv_shifts():
    """conv_shifts under torch.compile: forward and backward become fused Triton kernels (CUDA)."""
    import torch

    return torch.compile(conv_shifts)


def fused_conv(x, weight, bias=None):
    """compiled_conv_shifts()(x, weight, bias): compiled on the first call."""
    return compiled_conv_shifts()(x, weight, bias)


def cudnn_conv(x, weight, bias=None):
    """The fla path's training conv of sessions 2-4: ops.causal_conv1d (cuDNN depthwise Conv1d over a
    concatenated zero history, as [B, C, T]) from zero history; the fla path now uses causal_conv1d_fla."""
    from slab_edge.ops.causal_sla import causal_conv1d

    return causal_conv1d(x, weight, bias)[0]


def padded_conv(x, weight, bias=None):
    """Candidate conv: the library's cuDNN depthwise Conv1d, but with zero padding W-1 and the last W-1
    outputs dropped instead of a concatenated zero history (one copy of the input fewer, fwd and bwd)."""
    import torch.nn.functional as F

    t, ch = x.shape[1:]
    w = weight.reshape(ch, 1, -1).to(x.dtype)
    bias = None if bias is None else bias.to(x.dtype)
    y = F.conv1d(x.transpose(1, 2), w, bias, padding=w.shape[-1] - 1, groups=ch)  # [B, C, T + W-1]
    return y[..., :t].transpose(1, 2)


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
        causal_conv1d_fla,
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
    # the conv's weight and bias as bf16 leaves (their gradients are part of each conv's backward)
    wb = tuple(t.detach().to(dtype).requires_grad_() for t in (sla.dwc.weight, sla.dwc.bias))
    convs = {"conv_shifts": conv_shifts, "conv_padded": padded_conv}  # conv(x, weight, bias) -> y
    if device.type == "cuda":
        from slab_edge.ops.causal_sla_triton import causal_normalizer_triton

        convs["conv_fused"] = compiled_conv_shifts()
    else:
        print("conv_fused, normalizer_triton: skipped off CUDA (compiled kernels)")
    if mode == "fla":
        convs["fla_causal_conv"] = causal_conv1d_fla
    for length in args.lengths:
        batch = max(args.tokens // length, 1)
        gen = torch.Generator(device="cpu").manual_seed(length)
        q, k = (torch.rand(batch, length, heads, d, generator=gen).to(device, dtype) for _ in range(2))
        v = torch.randn(batch, length, heads, d, generator=gen).to(device, dtype)
        x = torch.randn(batch, length, args.dim, generator=gen).to(device, dtype)
        pieces = {
            "numerator": (lambda q, k, v: numerator(q, k, v)[0], (q, k, v)),
        }
        if mode == "fla":
            pieces["normalizer_fla"] = (
                lambda q, k: scan_normalizer(q, k, None, CAUSAL_SLA_EPS),
                (q, k),
            )
        if device.type == "cuda":
            pieces["normalizer_triton"] = (
                lambda q, k: causal_normalizer_triton(q, k, None, CAUSAL_SLA_EPS),
                (q, k),
            )
        pieces["normalizer_chunked"] = (
            lambda q, k: scan_normalizer(q, k, None, CAUSAL_SLA_EPS, scan=chunked_time_scan),
            (q, k),
        )
        pieces |= {
            "normalizer": (lambda q, k: causal_normalizer(q, k, None, CAUSAL_SLA_EPS), (q, k)),
            "normalizer_outer": (lambda q, k: outer_axis_normalizer(q, k, CAUSAL_SLA_EPS), (q, k)),
            "causal_conv": (lambda x: causal_conv1d(x, *wb)[0], (x,)),
        }
        row = {"length": length, "batch": batch}
        with torch.no_grad():
            ours = causal_conv1d(x, *wb)[0].float()
            for name, conv in convs.items():
                row[f"{name}_max_abs_diff"] = float((conv(x, *wb).float() - ours).abs().max())
        for name, conv in convs.items():
            pieces[name] = (lambda x, conv=conv: conv(x, *wb), (x,))
        for name, (fn, inputs) in pieces.items():
            row[name] = time_fwd_bwd(fn, inputs, device, args.iters, args.warmup)
        with torch.autocast(device_type=device.type, dtype=dtype):
            row["layer"] = time_fwd_bwd(lambda x: sla(x)[0], (x,), device, args.iters, args.warmup)
            row["gla_layer"] = time_fwd_bwd(lambda x: gla(x)[0], (x,), device, args.iters, args.warmup)
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
    names = [n for n in results["rows"][0] if n not in ("length", "batch") and not n.endswith("_diff")]
    print(f"causal SLA pieces, fwd + bwd median ms, {args.tokens} tokens, C {args.dim}, {heads} heads, "
          f"backend {mode}, {results['device']}")  # fmt: skip
    for r in results["rows"]:
        print(f"T {r['length']} B {r['batch']}: " + ", ".join(f"{n} {r[n]:.3f}" for n in names))
        print(
            "  conv max |diff| to causal_conv: "
            + ", ".join(f"{n[: -len('_max_abs_diff')]} {r[n]:.2g}" for n in r if n.endswith("_max_abs_diff"))
        )
    if args.out:
        from slab_edge.io import atomic_write_json

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
