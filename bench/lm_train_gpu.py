#!/usr/bin/env python3
"""Training throughput of slab-lm-350m on one CUDA GPU: gla / sla (fla kernels) vs softmax (SDPA), bf16.

    python bench/lm_train_gpu.py                                # the real run (H200: < 8 minutes)
    python bench/lm_train_gpu.py --lengths 8192 --attentions gla softmax --steps 10
    python bench/lm_train_gpu.py --smoke --device cpu           # pipeline check on a CPU (tiny model)

On the GPU machine (DEVICE.md), with flash-linear-attention staged into /tmp/site:
    export PYTHONPATH=$PWD:/tmp/site:$PYTHONPATH && python3 bench/lm_train_gpu.py --out $OUT/lm_train_gpu

What one step is: forward + cross-entropy + backward + AdamW (fused) on slab-lm-350m (dim 1024, 18 layers,
FFN 4096, vocab 32000; GLA with the paper's 4 heads, d_k = d/2), bf16 autocast over fp32 weights, the same
number of tokens per step at every sequence length (--tokens-per-step, default 16,384: batch 8 at 2k,
2 at 8k, 1 at 16k, so 16k fits). The attention kernels: gla -> fla chunk_gla, sla -> fla chunk_linear_attn
(+ our fp32 normalizer), softmax -> torch SDPA (FlashAttention), chosen by the model's attn_mode "auto"
(fla when importable on CUDA, else the PyTorch chunkwise path — the report says which ran).
Per configuration: --warmup steps (Triton compiles and autotunes here; the first fla compile can take
minutes), then --steps timed steps (CUDA-synchronised wall time); tokens/s = tokens per step / median step.
Goals (issue 5): gla/sla vs softmax >= 1.0x at 8k and >= 1.3x at 16k. A --budget-minutes guard (default
7.5) skips what is left rather than overrunning; skipped rows are reported as such.
Experiment rows: an attention written as sla/<piece>[+<piece>...] trains SLA with other pieces swapped into
the fla path, side by side with plain sla (SLA_PIECES lists them and what each replaces; off CUDA the chunk
path runs and the pieces change nothing): scan_divide (the session 3-4 normalizer: fla's single-pass
chunk_global_cumsum, then a PyTorch division, instead of the chunk-parallel Triton kernels), and for the
short conv cudnn_conv (the session 3-4 conv: cuDNN over a concatenated zero history, instead of fla's
causal_conv1d), padded_conv (cuDNN with padding=W-1) or fused_conv (torch.compile'd shifted sums).
E.g. sla/scan_divide+cudnn_conv is the session 3-4 library.
--profile N adds a torch.profiler breakdown of N steps per row (kernel time vs wall time, top kernels).
--rounds R (> 1) builds a length's configurations side by side (each 350m model with AdamW state is ~5.4 GB)
and times them interleaved, R rounds of --steps steps each; a row's median is over all its timed steps and its
per-round medians are kept (round_median_step_s) to show the spread.
Writes <out>/results.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

GOALS = {8192: 1.0, 16384: 1.3}


def attention_backend(model) -> str:
    """Which kernel the model's attention layers resolve to on their device."""
    import torch

    from slab_edge.ops.backend import resolve_mode

    attn = model.layers[0].attn
    if not hasattr(attn, "mode"):
        return "sdpa"
    probe = torch.empty(1, device=next(model.parameters()).device)
    return resolve_mode(attn.mode, probe)


# sla/<piece>[+<piece>...]: SLA trained with a piece of bench/sla_pieces_gpu.py (second name) in place of the
# library function (first name: module.attribute) it replaces
SLA_PIECES = {
    "scan_divide": (
        "slab_edge.ops.causal_sla_triton.divide_by_normalizer_triton",
        "scan_divide_by_normalizer",
    ),
    "cudnn_conv": ("slab_edge.ops.causal_sla.causal_conv1d_fla", "cudnn_conv"),
    "padded_conv": ("slab_edge.ops.causal_sla.causal_conv1d_fla", "padded_conv"),
    "fused_conv": ("slab_edge.ops.causal_sla.causal_conv1d_fla", "fused_conv"),
}


def sla_pieces(attention: str) -> list[str]:
    """The candidate pieces named by `sla/<piece>+<piece>` ([] for a plain attention). Raises ValueError on an
    unknown piece or two pieces that replace the same function."""
    base, _, variant = attention.partition("/")
    if not variant:
        return []
    pieces = variant.split("+")
    unknown = [piece for piece in pieces if piece not in SLA_PIECES]
    if base != "sla" or unknown:
        raise ValueError(
            f"{attention!r}: variants are sla/<piece>[+<piece>...] with pieces {list(SLA_PIECES)}"
        )
    targets = [SLA_PIECES[piece][0] for piece in pieces]
    if len(set(targets)) != len(targets):
        raise ValueError(f"{attention!r}: two pieces replace the same function ({targets})")
    return pieces


@contextlib.contextmanager
def sla_variant(pieces: list[str]):
    """Within the block, causal SLA runs with the given candidate pieces swapped in (see SLA_PIECES)."""
    if not pieces:
        yield
        return
    import sla_pieces_gpu as candidates  # imported on use: some pieces need triton or fla

    swaps = []  # (module, attribute, replacement); the library looks the functions up in these modules
    for piece in pieces:
        module_name, _, attr = SLA_PIECES[piece][0].rpartition(".")
        swaps.append((importlib.import_module(module_name), attr, getattr(candidates, SLA_PIECES[piece][1])))
    originals = [getattr(module, attr) for module, attr, _ in swaps]
    for module, attr, replacement in swaps:
        setattr(module, attr, replacement)
    try:
        yield
    finally:
        for (module, attr, _), original in zip(swaps, originals):
            setattr(module, attr, original)


class TrainingConfig:
    """One attention (optionally sla/<piece>+...) at one length: model, optimizer, batch and its timed steps.

    Several can live side by side so that `--rounds` interleaves their timed steps (A B C A B C ...): a slow
    stretch of the machine then hits every configuration instead of one.
    """

    def __init__(self, size: str, attention: str, length: int, args, device) -> None:
        import torch
        import torch.nn.functional as F

        from slab_edge.models.slab_lm import create_slab_lm

        self.name, self.length, self.device = attention, length, device
        # configurations built earlier (--rounds) stay resident: count only what this one adds
        self.memory_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        base = attention.partition("/")[0]
        self.pieces = sla_pieces(attention)
        kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
        self.batch = max(args.tokens_per_step // length, 1)
        torch.manual_seed(0)
        model = create_slab_lm(size, attention=base, norm=args.norm, context_length=length, **kwargs)
        self.model = model.to(device).train()
        fused = device.type == "cuda"
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=3e-4, weight_decay=0.01, fused=fused)
        step_fn = torch.compile(self.model) if args.compile else self.model
        amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=not args.fp32)
        vocab = self.model.config.vocab_size
        gen = torch.Generator(device="cpu").manual_seed(0)
        ids = torch.randint(0, vocab, (self.batch, length + 1), generator=gen).to(device)
        inputs, targets = ids[:, :-1], ids[:, 1:]

        def one_step() -> float:
            with sla_variant(self.pieces):
                with amp:
                    logits = step_fn(inputs)
                    loss = F.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1))
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(loss.detach())

        self.one_step, self.optimizer = one_step, optimizer
        self.times: list[float] = []
        self.round_medians: list[float] = []
        self.loss, self.warmup_s = float("nan"), 0.0

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def warm_up(self, steps: int) -> None:
        """Untimed steps (fla's Triton kernels compile and autotune here)."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.one_step()
        self.sync()
        self.warmup_s = time.perf_counter() - start
        if self.device.type == "cuda":
            self.peak_memory_gb = (torch.cuda.max_memory_allocated(self.device) - self.memory_before) / 2**30

    def time_steps(self, steps: int) -> None:
        """`steps` CUDA-synchronised steps; their median joins round_medians."""
        times = []
        for _ in range(steps):
            self.sync()
            start = time.perf_counter()
            self.loss = self.one_step()
            self.sync()
            times.append(time.perf_counter() - start)
        self.times += times
        self.round_medians.append(statistics.median(times))

    def row(self, args) -> dict[str, Any]:
        median = statistics.median(self.times)
        row = {
            "attention": self.name,
            "backend": attention_backend(self.model),
            "length": self.length,
            "batch": self.batch,
            "tokens_per_step": self.batch * self.length,
            "median_step_s": median,
            "min_step_s": min(self.times),
            "tokens_per_s": self.batch * self.length / median,
            "warmup_s": self.warmup_s,
            "loss": self.loss,
            "params": sum(p.numel() for p in self.model.parameters()),
        }
        if len(self.round_medians) > 1:
            row["round_median_step_s"] = self.round_medians
        if self.device.type == "cuda":
            row["peak_memory_gb"] = self.peak_memory_gb  # model, AdamW state and one step's activations
        if args.profile:
            row["profile"] = profile_steps(self.one_step, self.sync, args.profile, args.profile_top)
        return row

    def close(self) -> None:
        import torch

        del self.model, self.optimizer, self.one_step
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def run_length(length: int, order: list[str], args, device, start: float) -> list[dict[str, Any]]:
    """Every attention at one length: one after another (--rounds 1), or built side by side, warmed up, and
    timed in --rounds interleaved rounds of --steps steps each."""
    import torch

    rows, configs = [], []

    def budget_left(attention: str) -> bool:
        elapsed = (time.perf_counter() - start) / 60
        if elapsed > args.budget_minutes:
            rows.append({"attention": attention, "length": length, "skipped": f"budget ({elapsed:.1f} min)"})
            return False
        return True

    def finish(config: TrainingConfig) -> None:
        rows.append(config.row(args))
        config.close()
        print(json.dumps(rows[-1]), flush=True)

    for attention in order:
        if not budget_left(attention):
            continue
        try:
            config = TrainingConfig(args.size, attention, length, args, device)
            config.warm_up(args.warmup)
            if args.rounds == 1:
                config.time_steps(args.steps)
                finish(config)
            else:
                configs.append(config)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            rows.append({"attention": attention, "length": length, "skipped": "out of memory"})
        except Exception as error:  # a broken candidate (say, a kernel that fails to compile) costs one row
            traceback.print_exc()
            failure = f"{type(error).__name__}: {error}"[:300]
            rows.append({"attention": attention, "length": length, "skipped": failure})
    for _ in range(args.rounds if configs else 0):
        for config in configs:
            config.time_steps(args.steps)
    for config in configs:
        finish(config)
    return rows


def profile_steps(one_step, sync, steps: int, top: int) -> dict[str, Any]:
    """torch.profiler over `steps` steps: device-kernel time per step vs wall time, and the top kernels.

    busy = kernel time / wall time; well below 1 means the step waits on the host (launch-bound).
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    sync()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            one_step()
        sync()
        wall_ms = (time.perf_counter() - start) * 1e3 / steps
    kernels = []
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:
            device_us = event.self_cuda_time_total
        if device_us and str(getattr(event, "device_type", "")).endswith("CUDA"):
            kernels.append((device_us / 1e3 / steps, event.count / steps, event.key[:100]))
    kernels.sort(reverse=True)
    kernel_ms = sum(k[0] for k in kernels)
    return {
        "wall_ms": wall_ms,
        "kernel_ms": kernel_ms,
        "busy": kernel_ms / wall_ms,
        "kernel_launches": sum(k[1] for k in kernels),
        "top": [{"ms": ms, "calls": calls, "kernel": name} for ms, calls, name in kernels[:top]],
    }


def _write(path: Path, data: dict[str, Any]) -> None:
    from slab_edge.io import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)


def table(results: dict[str, Any]) -> str:
    rows = results["rows"]
    lines = [
        f"slab-lm-{results['size']} training, {results['dtype']}, {results['device_name']}, "
        f"{results['tokens_per_step']} tokens/step, median of {results['steps']} steps",
        " ".join(
            f"{h:>{w}}"
            for h, w in (
                ("attention", 22),
                ("backend", 9),
                ("T", 6),
                ("batch", 5),
                ("tokens/s", 10),
                ("step ms", 9),
                ("vs softmax", 10),
                ("peak GB", 8),
            )
        ),
    ]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"{r['attention']:>22} {'-':>9} {r['length']:>6} skipped: {r['skipped']}")
            continue
        ratio = r.get("speedup_vs_softmax")
        ratio_text = f"{ratio:.2f}x" if ratio is not None else "-"
        lines.append(
            f"{r['attention']:>22} {r['backend']:>9} {r['length']:>6} {r['batch']:>5} "
            f"{r['tokens_per_s']:>10.0f} {r['median_step_s'] * 1e3:>9.1f} {ratio_text:>10} "
            f"{r.get('peak_memory_gb', float('nan')):>8.1f}"
        )
    for check in results["goals"]:
        lines.append(check)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench-lm-train-gpu"))
    p.add_argument("--size", default="350m", help="slab-lm config (tiny | 125m | 350m)")
    p.add_argument("--attentions", nargs="+", default=["softmax", "gla", "sla"])
    p.add_argument(
        "--lengths", nargs="+", type=int, default=[8192, 16384, 2048], help="the goal lengths first"
    )
    p.add_argument("--tokens-per-step", type=int, default=16384)
    p.add_argument("--norm", default="rmsnorm", help="rmsnorm | prepbn (training cost of both branches)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=6, help="timed steps per configuration (per round)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="> 1: keep each length's configurations side by side and "
        "interleave their timed steps in this many rounds",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--profile", type=int, default=0, help="after timing, profile this many steps")
    p.add_argument("--profile-top", type=int, default=25, help="kernels listed per profiled row")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU smoke runs)")
    p.add_argument("--budget-minutes", type=float, default=7.5, help="skip configurations after this")
    p.add_argument("--model-kwargs", default=None, help="JSON SLAB-LM config overrides")
    p.add_argument("--smoke", action="store_true", help="tiny model, T 64/128, 1+2 steps (pipeline check)")
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.lengths, args.tokens_per_step, args.warmup, args.steps = "tiny", [64, 128], 256, 1, 2
        args.attentions = (
            args.attentions if args.attentions != ["softmax", "gla", "sla"] else ["softmax", "gla"]
        )
    for attention in args.attentions:
        try:
            sla_pieces(attention)
        except ValueError as error:
            p.error(str(error))  # before any model is built

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (use --device cpu --smoke for a pipeline check)", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    from slab_edge.ops.backend import fla_available

    start = time.perf_counter()
    rows = []
    # softmax first at each length, so every linear-attention row has its baseline even if time runs out
    order = sorted(args.attentions, key=lambda a: a != "softmax")
    for length in args.lengths:
        rows += run_length(length, order, args, device, start)
        _write(args.out / "partial.json", {"rows": rows})  # survives a run cut short by a time limit
    goals = []
    for length in args.lengths:
        base = next(
            (r for r in rows if r["length"] == length and r["attention"] == "softmax" and "skipped" not in r),
            None,
        )
        for r in rows:
            if r["length"] != length or r["attention"] == "softmax" or "skipped" in r or base is None:
                continue
            r["speedup_vs_softmax"] = r["tokens_per_s"] / base["tokens_per_s"]
            if length in GOALS:
                ok = r["speedup_vs_softmax"] >= GOALS[length]
                goals.append(
                    f"{r['attention']} ({r['backend']}) vs softmax at {length}: "
                    f"{r['speedup_vs_softmax']:.2f}x "
                    f"(goal >= {GOALS[length]}x): {'ok' if ok else 'MISSED'}"
                )
    results = {
        "size": args.size,
        "dtype": "fp32" if args.fp32 else "bf16 autocast",
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "fla_available": fla_available(),
        "compile": args.compile,
        "tokens_per_step": args.tokens_per_step,
        "steps": args.steps,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "total_minutes": (time.perf_counter() - start) / 60,
        "rows": rows,
        "goals": goals,
    }
    _write(args.out / "results.json", results)
    (args.out / "partial.json").unlink(missing_ok=True)
    print(table(results))
    for r in rows:
        if "profile" in r:
            prof = r["profile"]
            kernels = (
                f"kernels {prof['kernel_ms']:.1f} ms (busy {prof['busy']:.2f}), "
                f"{prof['kernel_launches']:.0f} launches"
                if prof["kernel_launches"]
                else "no device kernels (CPU run)"
            )
            print(f"profile {r['attention']} T {r['length']}: wall {prof['wall_ms']:.1f} ms, {kernels}")
            for k in prof["top"]:
                print(f"  {k['ms']:8.2f} ms {k['calls']:6.0f}x  {k['kernel']}")
    print(f"total {results['total_minutes']:.1f} min; results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
