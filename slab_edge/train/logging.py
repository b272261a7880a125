"""Run logging (model-agnostic): a tqdm progress bar, metrics as JSON lines, and a PNG plot of them.

Records are flat dicts with a `kind` ("train", "eval", "event", ...) and a `step` (optimizer steps taken):

    log = MetricsLog(run_dir / "metrics.jsonl", resume_step=None)   # fresh run: starts an empty file
    log.write("train", step=10, epoch=0, loss=2.1, lr=1e-3, mix_weight=0.9)
    plot_metrics(read_metrics(log.path), run_dir / "metrics.png", panels=VISION_PANELS)

JSONL is appended line by line (a crash can cut at most the last line, which `read_metrics` skips); on
resume the records after the checkpoint's step are dropped (an atomic rewrite), so the file describes
exactly the run that produced the final weights. The plot is always written atomically.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slab_edge.io import atomic_path, atomic_write_text

__all__ = [
    "LM_PANELS",
    "VISION_PANELS",
    "MetricsLog",
    "Progress",
    "plot_metrics",
    "read_metrics",
]

#: panel title -> [(record kind, key, label)]: what `plot_metrics` draws for vision runs.
VISION_PANELS: dict[str, list[tuple[str, str, str]]] = {
    "loss": [("train", "loss", "train loss"), ("eval", "loss", "held-out loss")],
    "accuracy (%)": [
        ("eval", "acc", "held-out top-1"),
        ("eval", "ema_acc", "EMA top-1"),
        ("final", "acc", "recalibrated"),
        ("final", "deploy_acc", "folded (deploy)"),
    ],
    "LN mix weight g / lr": [("train", "mix_weight", "mix weight g"), ("train", "lr_rel", "lr / peak lr")],
}
#: the same for language models (perplexity instead of accuracy).
LM_PANELS: dict[str, list[tuple[str, str, str]]] = {
    "loss": [("train", "loss", "train loss"), ("eval", "loss", "held-out loss")],
    "perplexity": [("eval", "ppl", "held-out ppl")],
    "LN mix weight g / lr": [("train", "mix_weight", "mix weight g"), ("train", "lr_rel", "lr / peak lr")],
}


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep it readable
    if hasattr(value, "item") and callable(value.item):
        return _clean(value.item())
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every complete JSON record in a metrics file (a cut-off last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


class MetricsLog:
    """Append-only JSONL metrics file; only the main process writes (others get enabled=False).

    Args:
        path: the .jsonl file.
        resume_step: None starts a fresh file; an int keeps the records with step <= resume_step.
        enabled: False makes every call a no-op (non-zero ranks).
    """

    def __init__(self, path: str | Path, resume_step: int | None = None, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        kept = []
        if resume_step is not None:
            kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= resume_step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, kind: str, **fields: Any) -> dict[str, Any]:
        record = {"kind": kind, "time": round(time.time(), 3), **{k: _clean(v) for k, v in fields.items()}}
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        return record

    def records(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)


def stderr_is_terminal() -> bool:
    """True when stderr is an interactive terminal (a bar redrawn with \\r is unreadable in a log file)."""
    stream = sys.stderr
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """tqdm bar over one epoch (or any count) with a postfix of live numbers; silent when disabled or when
    stderr is not a terminal (CI logs, `2> file`, pipes): the epoch lines on stdout say the same."""

    def __init__(self, total: int, desc: str = "", enabled: bool = True, initial: int = 0) -> None:
        self.bar = None
        if enabled and stderr_is_terminal():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False, file=sys.stderr
            )

    def update(self, n: int = 1, **postfix: Any) -> None:
        if self.bar is None:
            return
        if postfix:
            self.bar.set_postfix({k: _fmt(v) for k, v in postfix.items() if v is not None}, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e3 else f"{v:.4f}"
    return str(v)


def plot_metrics(
    records: Sequence[dict[str, Any]],
    path: str | Path,
    panels: dict[str, list[tuple[str, str, str]]] | None = None,
    title: str = "",
) -> Path | None:
    """Draw one panel per entry of `panels` against optimizer step; write a PNG atomically.

    Returns the path, or None when there is nothing to plot yet.
    """
    panels = panels or VISION_PANELS
    series: dict[str, list[tuple[str, list[float], list[float]]]] = {}
    for name, specs in panels.items():
        for kind, key, label in specs:
            xs, ys = [], []
            for r in records:
                if r.get("kind") != kind or key not in r:
                    continue
                try:
                    y = float(r[key])
                except (TypeError, ValueError):
                    continue
                if math.isfinite(y):
                    xs.append(float(r.get("step", 0)))
                    ys.append(y)
            if xs:
                series.setdefault(name, []).append((label, xs, ys))
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    names = [n for n in panels if n in series]
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.6 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        for label, xs, ys in series[name]:
            ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_ylabel(name)
        values = [y for _, _, ys in series[name] for y in ys]
        if name.startswith("loss") and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")  # held-out loss spikes while the LN weight is high would flatten the rest
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel("optimizer step")
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
