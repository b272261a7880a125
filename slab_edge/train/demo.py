"""`make demo` / `slab-edge demo`: the whole job on the embedded digits, one timed step at a time.

    train (slab_deit_digits, PRepBN LN->RepBN) -> recalibrate BN -> fold every norm -> evaluate folded
    (== trained within 0.1 point) -> save + reload the deploy checkpoint

Steps are plain functions `step(state) -> dict of facts` in `DEMO_STEPS`; later stages (ONNX export,
on-device inference) append their own:

    from slab_edge.train.demo import DEMO_STEPS, DemoState
    def export_step(state: DemoState) -> dict: ...; state.paths["onnx"] = ...; return {"onnx": ...}
    DEMO_STEPS.append(("export", export_step))

`DemoState` carries the config, the trained and folded models, the loaders, the files written and every
fact printed so far (`state.facts`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slab_edge.errors import SlabEdgeError

__all__ = ["DEMO_STEPS", "DemoState", "demo_config", "run_demo"]


@dataclass
class DemoState:
    """Everything the demo steps share."""

    output: Path
    cfg: Any  # TrainConfig
    model: torch.nn.Module | None = None  # trained (then recalibrated) model, unfolded
    folded: torch.nn.Module | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # model identity + preprocessing (model files)
    train_loader: Any = None  # training images with eval transforms (recalibration)
    val_loader: Any = None  # held-out split
    paths: dict[str, Path] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def demo_config(output: str | Path = "runs/demo", **overrides: Any):
    """The demo's training config: the digits recipe, with recalibration and folding left to later steps."""
    from slab_edge.train.recipes import resolve_train_config

    values = {
        "model": "slab_deit_digits",
        "data": "digits",
        "output": str(Path(output) / "train"),
        "overwrite": True,
        **overrides,
        "deploy": False,
        "recal_epochs": 0,
        "recal_steps": 0,
    }
    return resolve_train_config(cli_values=values)


def step_train(state: DemoState) -> dict[str, Any]:
    from slab_edge.train.data import loaders_for_model
    from slab_edge.train.vision import train_vision

    result = train_vision(state.cfg)
    # the later steps (recalibrate, fold, export) run on the CPU whatever device trained the model
    state.model, state.meta = result.model.cpu(), dict(result.meta)
    state.train_loader, state.val_loader, _ = loaders_for_model(state.cfg.data, state.meta, batch_size=128)
    state.paths["run"] = result.run_dir
    return {
        "trained steps": result.steps,
        "held-out top-1 after training": result.final_eval.get("acc"),
        "training images/s": round(result.images_per_second, 1),
    }


def step_recalibrate(state: DemoState, epochs: float = 1.0) -> dict[str, Any]:
    import itertools

    from slab_edge.train.evaluate import evaluate
    from slab_edge.train.recalibrate import recalibrate_bn

    batches = max(1, int(round(epochs * len(state.train_loader))))
    stream = itertools.islice(itertools.chain.from_iterable(itertools.repeat(state.train_loader)), batches)
    used = recalibrate_bn(state.model, stream)
    acc = evaluate(state.model, state.val_loader)["acc"]
    state.facts["acc_trained"] = acc
    return {"recalibration batches": used, "held-out top-1 (recalibrated)": acc}


def step_fold(state: DemoState) -> dict[str, Any]:
    from slab_edge.layers.reparam import reparameterize_model
    from slab_edge.train.evaluate import evaluate, predict_logits
    from slab_edge.train.vision import FOLD_TOLERANCE_POINTS

    state.folded = reparameterize_model(state.model)
    acc = evaluate(state.folded, state.val_loader)["acc"]
    diff = abs(acc - state.facts["acc_trained"])
    logit_diff = float(
        (predict_logits(state.model, state.val_loader) - predict_logits(state.folded, state.val_loader))
        .abs()
        .max()
    )
    state.facts.update(acc_folded=acc, fold_acc_diff=diff, fold_logit_diff=logit_diff)
    if diff > FOLD_TOLERANCE_POINTS:
        raise SlabEdgeError(
            f"folded top-1 {acc:.2f}% vs trained {state.facts['acc_trained']:.2f}%: "
            f"differs by {diff:.2f} points (> {FOLD_TOLERANCE_POINTS})"
        )
    return {
        "held-out top-1 (folded)": acc,
        "parity: |top-1 diff| (points)": diff,
        "parity: max |logit diff|": logit_diff,
    }


def step_save(state: DemoState) -> dict[str, Any]:
    from slab_edge.layers.reparam import fold_metadata
    from slab_edge.train.model_files import DEPLOY_FILE, load_model, save_model_file

    meta = {
        **state.meta,
        "deploy": True,
        **fold_metadata(state.folded, state.model),
        "metrics": {"acc": state.facts["acc_folded"], "acc_unfolded": state.facts["acc_trained"]},
    }
    path = save_model_file(state.output / DEPLOY_FILE, state.folded, meta)
    reloaded, _ = load_model(path)  # builds with deploy=True and loads strictly
    x = next(iter(state.val_loader))[0][:8]
    with torch.no_grad():
        same = torch.equal(reloaded(x), state.folded(x))
    if not same:
        raise SlabEdgeError(f"{path} does not reproduce the folded model's logits after reloading")
    state.paths["deploy"] = path
    return {"deploy checkpoint": str(path), "reloads strictly (deploy=True), same logits": same}


#: (name, step function) in order; later stages append theirs.
DEMO_STEPS: list[tuple[str, Callable[[DemoState], dict[str, Any]]]] = [
    ("train", step_train),
    ("recalibrate", step_recalibrate),
    ("fold", step_fold),
    ("save", step_save),
]


def run_demo(
    output: str | Path = "runs/demo",
    steps: list[tuple[str, Callable[[DemoState], dict[str, Any]]]] | None = None,
    say: Callable[[str], None] = print,
    **overrides: Any,
) -> DemoState:
    """Run every demo step, printing each step's facts and time; returns the final state.

    Args:
        output: demo folder (training run in <output>/train, deploy checkpoint in <output>).
        steps: defaults to DEMO_STEPS.
        overrides: training config keys (e.g. epochs=5, threads=1).
    """
    from slab_edge.io import atomic_write_json, check_output

    config = demo_config(output, **overrides)  # bad keys stop the demo before its folder exists
    output = check_output(output, folder=True, label="demo folder")
    state = DemoState(output=output, cfg=config)
    t_start = time.perf_counter()
    for name, fn in steps or DEMO_STEPS:
        say(f"\n[demo] {name} ...")
        t0 = time.perf_counter()
        facts = fn(state) or {}
        state.timings[name] = time.perf_counter() - t0
        for key, value in facts.items():
            shown = f"{value:.4g}" if isinstance(value, float) else value
            say(f"[demo]   {key}: {shown}")
        say(f"[demo]   ({state.timings[name]:.1f} s)")
    total = time.perf_counter() - t_start
    state.timings["total"] = total
    say("\n[demo] summary")
    if "acc_trained" in state.facts:
        say(
            f"[demo]   held-out top-1: trained {state.facts['acc_trained']:.2f}%, "
            f"folded {state.facts.get('acc_folded', float('nan')):.2f}%"
        )
    if "fold_logit_diff" in state.facts:
        say(f"[demo]   fold parity: max |logit diff| {state.facts['fold_logit_diff']:.2e}")
    say("[demo]   time: " + ", ".join(f"{k} {v:.1f} s" for k, v in state.timings.items()))
    atomic_write_json(
        output / "demo.json",
        {
            "config": dataclasses.asdict(state.cfg),
            "facts": state.facts,
            "timings": state.timings,
            "paths": {k: str(v) for k, v in state.paths.items()},
        },
    )
    return state
