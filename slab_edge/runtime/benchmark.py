"""Latency / throughput / memory of one or two models, measured side by side in one process (torch-free).

Method: each model gets its own random input of its own shape (batch `batch`); warm-up runs first (not
timed); then `iters` timed iterations where every iteration runs each model once, alternating which goes
first (A B, B A, A B, ...) so slow drift of the machine — thermal throttling, another process — hits both
models equally. Latency is wall time around `session.run` (host <-> device copies included for
TensorRT). Peak RSS is the process's high-water mark (resource.getrusage), so with two models it covers
both; `rss_mb_after_load` shows what each load added.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slab_edge.errors import InputError
from slab_edge.runtime.session import Session


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds over the timed iterations; throughput in items (images) per second at `batch`."""

    batch: int
    iters: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float

    @classmethod
    def from_seconds(cls, seconds: Sequence[float], batch: int) -> LatencyStats:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        if ms.size == 0:
            raise InputError("no timed iterations")
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(batch, int(ms.size), float(ms.mean()), float(p50), float(p90), float(p99),
                   float(ms.min()), float(ms.max()), float(ms.std()))  # fmt: skip

    @property
    def throughput(self) -> float:
        """Items per second from the median latency (robust to a few slow outliers)."""
        return self.batch * 1e3 / self.p50_ms

    def to_json(self) -> dict[str, Any]:
        out = {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}
        out["throughput_per_s"] = round(self.throughput, 3)
        return out


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float | None:
    """Current resident set size, MiB (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        return None


def random_inputs(session: Session, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs for every model input at `batch` (fixed batch dims are kept).

    Dynamic spatial dims are taken from the model's metadata input_size ([C, H, W]) when it has one.
    """
    rng = np.random.default_rng(seed)
    size = session.metadata.get("input_size")
    feeds = {}
    for spec in session.inputs:
        fill = {}
        if size and len(spec.shape) == len(size) + 1:
            fill = {axis + 1: int(v) for axis, v in enumerate(size)}
        if spec.shape and spec.shape[0] is not None and spec.shape[0] != batch:
            raise InputError(
                f"{session.path.name}: input {spec.describe()} has a fixed batch of {spec.shape[0]}, "
                f"not {batch}"
            )
        shape = spec.concrete_shape(batch, fill)
        if np.issubdtype(spec.dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif np.issubdtype(spec.dtype, np.integer):
            feeds[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
        else:
            feeds[spec.name] = np.zeros(shape, spec.dtype)
    return feeds


#: defaults of time_interleaved: runs per session in a row, and how many of them after a switch go untimed
BURST = 5
SWITCH_DISCARD = 2


def time_interleaved(
    sessions: Mapping[str, Session],
    feeds: Mapping[str, Mapping[str, np.ndarray]],
    warmup: int = 10,
    iters: int = 100,
    interleave: bool = True,
    burst: int = BURST,
    switch_discard: int = SWITCH_DISCARD,
) -> dict[str, list[float]]:
    """Seconds per `run` for each session: `iters` timed runs each.

    With `interleave`, sessions take turns in bursts: `switch_discard` untimed runs, then `burst` timed
    runs, the order of the sessions rotating every round, so drift of the machine lands on all of them
    alike. The untimed runs matter on a CPU: ONNX Runtime's intra-op threads spin-wait after a run, so
    the first runs of a session right after another one compete with the idle session's spinning threads
    (measured on this project's 2-core machine: SLAB-DeiT-T at 224, 20 ms per run when strictly
    alternating with DeiT-T, 11 ms alone). Strict alternation is `burst=1, switch_discard=0`.
    Without `interleave`, each session runs all its iterations in turn.
    """
    names = list(sessions)
    if iters < 1 or warmup < 0:
        raise InputError(f"iters must be >= 1 and warmup >= 0, got {iters} / {warmup}")
    if burst < 1 or switch_discard < 0:
        raise InputError(f"burst must be >= 1 and switch_discard >= 0, got {burst} / {switch_discard}")
    for _ in range(warmup):
        for name in names:
            sessions[name].run(feeds[name])
    times: dict[str, list[float]] = {name: [] for name in names}

    def timed(name: str) -> None:
        session, feed = sessions[name], feeds[name]
        start = time.perf_counter()
        session.run(feed)
        times[name].append(time.perf_counter() - start)

    if not interleave:
        for name in names:
            for _ in range(iters):
                timed(name)
        return times
    discard = switch_discard if len(names) > 1 else 0
    round_ = 0
    while len(times[names[0]]) < iters:
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            for _ in range(discard):
                sessions[name].run(feeds[name])
            for _ in range(min(burst, iters - len(times[name]))):
                timed(name)
        round_ += 1
    return times


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def benchmark_models(
    models: Sequence[str | os.PathLike],
    names: Sequence[str] | None = None,
    batch: int = 1,
    warmup: int = 10,
    iters: int = 100,
    interleave: bool = True,
    session_options: Sequence[Mapping[str, Any]] | None = None,
    seed: int = 0,
    burst: int = BURST,
    switch_discard: int = SWITCH_DISCARD,
) -> dict[str, Any]:
    """Load 1+ models, time them side by side, and return the report (JSON-able).

    Returns:
        {"config", "machine", "models": [{"name", "path", "backend", "inputs", "rss_mb_after_load",
        "custom_op_library", "latency": LatencyStats.to_json()}], "peak_rss_mb", "ratios": {"A/B": {...}}
        (2 models)}
    """
    from slab_edge.runtime.loader import load

    if not models:
        raise InputError("no model to benchmark")
    names = list(names) if names else [chr(ord("A") + i) for i in range(len(models))]
    if len(names) != len(models) or len(set(names)) != len(names):
        raise InputError(f"need one distinct name per model, got {names}")
    options = list(session_options) if session_options else [{} for _ in models]
    sessions: dict[str, Session] = {}
    entries = []
    try:
        for name, path, opts in zip(names, models, options):
            sessions[name] = load(path, **opts)
            entries.append({"name": name, "path": str(path), "rss_mb_after_load": current_rss_mb()})
        feeds = {name: random_inputs(s, batch, seed) for name, s in sessions.items()}
        times = time_interleaved(sessions, feeds, warmup, iters, interleave, burst, switch_discard)
        for entry in entries:
            session = sessions[entry["name"]]
            stats = LatencyStats.from_seconds(times[entry["name"]], batch)
            library = getattr(session, "custom_op_library", None)  # ONNX Runtime with fused SLA nodes
            entry.update(
                backend=session.backend,
                model_name=session.metadata.get("model"),
                custom_op_library=None if library is None else str(library),
                inputs={k: list(v.shape) for k, v in feeds[entry["name"]].items()},
                latency=stats.to_json(),
            )
    finally:
        for session in sessions.values():
            session.close()
    report: dict[str, Any] = {
        "config": {
            "batch": batch,
            "warmup": warmup,
            "iters": iters,
            "interleaved": interleave,
            "burst": burst,
            "switch_discard": switch_discard,
            "session_options": [dict(o) for o in options],
        },  # fmt: skip
        "machine": machine_info(),
        "models": entries,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if len(entries) == 2:
        a, b = entries[0]["latency"], entries[1]["latency"]
        report["ratios"] = {
            f"{names[0]}/{names[1]}": {
                "p50": round(a["p50_ms"] / b["p50_ms"], 4),
                "mean": round(a["mean_ms"] / b["mean_ms"], 4),
                "min": round(a["min_ms"] / b["min_ms"], 4),
            }
        }
    return report


def format_report(report: dict[str, Any]) -> str:
    """A fixed-width table of the report, one row per model, plus the ratio line."""
    columns = ("p50", "p90", "p99", "mean", "items/s")
    width = max([8] + [len(m["name"]) for m in report["models"]])
    header = f"{'model':<{width}} {'backend':<12} {'input':<18} " + " ".join(f"{c:>9}" for c in columns)
    lines = [header, "-" * len(header)]
    for m in report["models"]:
        lat = m["latency"]
        shape = "x".join(map(str, next(iter(m["inputs"].values()), [])))
        lines.append(
            f"{m['name']:<{width}} {m['backend']:<12} {shape:<18} "
            + " ".join(f"{lat[k]:>7.2f}ms" for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"))
            + f" {lat['throughput_per_s']:>9.1f}"
        )
    for m in report["models"]:
        library = f" (custom ops: {m['custom_op_library']})" if m.get("custom_op_library") else ""
        lines.append(f"{m['name']}: {m['path']}{library}")
    for pair, ratio in report.get("ratios", {}).items():
        lines.append(f"latency ratio {pair}: {ratio['p50']:.3f} (p50), {ratio['mean']:.3f} (mean)")
    cfg = report["config"]
    lines.append(
        f"{cfg['iters']} iterations after {cfg['warmup']} warm-up, batch {cfg['batch']}, "
        f"{'interleaved' if cfg['interleaved'] else 'sequential'}; peak RSS {report['peak_rss_mb']:.0f} MiB"
    )
    return "\n".join(lines)
