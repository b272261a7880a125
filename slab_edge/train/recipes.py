"""The vision training config and per-model / per-data recipe defaults (REFERENCE §4).

Layers, later wins: dataclass defaults (the DeiT/SLAB ImageNet recipe) < model-family recipe < data recipe
(`digits`, `synthetic`) < YAML file (--config) < command-line flags and --set. `resolve_train_config`
applies them; the result is saved as `config.yaml` in the run folder, and a resumed run starts from that
saved config (flags given with --resume still apply on top).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from slab_edge.commands.argtypes import (
    float_range,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from slab_edge.train.config import build_config

__all__ = ["DATA_RECIPES", "FAMILY_RECIPES", "TrainConfig", "recipe_for", "resolve_train_config"]


def _h(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


_UNIT_OPEN = float_range(0, 1, high_open=True)  #: betas, momentum, drop path, label smoothing: 1 breaks them
_CROP_PCT = float_range(0, 1.5, low_open=True)  #: what the runtime's EvalTransform accepts


@dataclass
class TrainConfig:
    """Every knob of `slab-edge train`. Defaults are the official SLAB/DeiT ImageNet recipe."""

    # what to train on what
    model: str = field(default="slab_deit_digits", metadata=_h("registered model name (timm or slab-edge)"))
    model_kwargs: dict = field(
        default_factory=dict, metadata=_h("extra builder kwargs, e.g. {norm_type: layernorm}")
    )
    data: str = field(
        default="digits",
        metadata=_h("digits | synthetic | a folder with train/ and val/ class folders (ImageFolder)"),
    )
    output: str | None = field(default=None, metadata=_h("run folder (default runs/<model>-<data>)"))
    overwrite: bool = field(default=False, metadata=_h("reuse an output folder that already holds a run"))
    seed: int = field(
        default=0,
        metadata=_h("seed for weights, data order (with the epoch) and augmentation", check=non_negative_int),
    )
    # schedule
    epochs: int = field(default=300, metadata=_h("training epochs", check=positive_int))
    max_steps: int | None = field(
        default=None,
        metadata=_h("cap the run at N updates (schedules fit the shorter run)", check=positive_int),
    )
    batch_size: int = field(default=128, metadata=_h("images per process per forward", check=positive_int))
    grad_accum: int = field(default=1, metadata=_h("forwards per optimizer step", check=positive_int))
    lr: float | None = field(
        default=None,
        metadata=_h("peak lr; None = base_lr * global batch / lr_base_size", check=positive_float),
    )
    base_lr: float = field(
        default=5e-4, metadata=_h("lr per lr_base_size images of global batch", check=positive_float)
    )
    lr_base_size: int = field(
        default=512, metadata=_h("batch size base_lr is quoted for", check=positive_int)
    )
    min_lr: float = field(default=5e-6, metadata=_h("cosine floor", check=non_negative_float))
    warmup_lr: float = field(
        default=5e-7, metadata=_h("lr at the first step of warm-up", check=non_negative_float)
    )
    warmup_epochs: float = field(
        default=20, metadata=_h("linear warm-up length (epochs, may be fractional)", check=non_negative_float)
    )
    cooldown_epochs: float = field(
        default=0, metadata=_h("epochs at min_lr after the cosine", check=non_negative_float)
    )
    sched: str = field(default="cosine", metadata=_h("timm scheduler name, stepped per optimizer step"))
    opt: str = field(default="adamw", metadata=_h("timm optimizer name"))
    opt_eps: float = field(default=1e-8, metadata=_h("optimizer epsilon", check=positive_float))
    opt_betas: tuple[float, float] = field(default=(0.9, 0.999), metadata=_h("Adam betas", check=_UNIT_OPEN))
    momentum: float = field(default=0.9, metadata=_h("SGD momentum (for opt=sgd)", check=_UNIT_OPEN))
    weight_decay: float = field(
        default=0.05, metadata=_h("decoupled weight decay (not on norms/biases)", check=non_negative_float)
    )
    clip_grad: float | None = field(
        default=5.0, metadata=_h("clip the gradient norm to this (None = off)", check=positive_float)
    )
    drop_path: float | None = field(
        default=None, metadata=_h("stochastic depth rate (None = model default)", check=_UNIT_OPEN)
    )
    # progressive norm
    prepbn_decay: float | None = field(
        default=None,
        metadata=_h(
            "LN->RepBN decay T: steps if >= 1, fraction of total steps if < 1, 0 = RepBN at once",
            check=non_negative_float,
        ),
    )
    prepbn_warmup: float | None = field(
        default=None, metadata=_h("LN-only steps before the decay (same units)", check=non_negative_float)
    )
    nonfinite_patience: int = field(
        default=20, metadata=_h("stop after this many non-finite updates in a row", check=non_negative_int)
    )
    # data and augmentation
    input_size: int | None = field(
        default=None, metadata=_h("image side (None = the model's)", check=positive_int)
    )
    mean: tuple[float, ...] | None = field(
        default=None, metadata=_h("normalisation mean (None = model's)", check=probability)
    )
    std: tuple[float, ...] | None = field(
        default=None, metadata=_h("normalisation std (None = model's)", check=positive_float)
    )
    interpolation: str = field(default="bicubic", metadata=_h("resize filter"))
    crop_pct: float = field(
        default=0.875, metadata=_h("eval centre-crop fraction (224/256)", check=_CROP_PCT)
    )
    scale: tuple[float, float] = field(
        default=(0.08, 1.0),
        metadata=_h("random-resized-crop area range", check=float_range(0, 1, low_open=True)),
    )
    ratio: tuple[float, float] = field(
        default=(0.75, 1.3333), metadata=_h("random-resized-crop aspect range", check=positive_float)
    )
    hflip: float = field(default=0.5, metadata=_h("horizontal flip probability", check=probability))
    color_jitter: float = field(default=0.4, metadata=_h("colour jitter strength", check=non_negative_float))
    aa: str | None = field(default="rand-m9-mstd0.5-inc1", metadata=_h("timm auto-augment spec (None = off)"))
    reprob: float = field(default=0.25, metadata=_h("random erasing probability", check=probability))
    remode: str = field(default="pixel", metadata=_h("random erasing fill mode"))
    recount: int = field(default=1, metadata=_h("random erasing count", check=positive_int))
    mixup: float = field(default=0.8, metadata=_h("mixup alpha (0 = off)", check=non_negative_float))
    cutmix: float = field(default=1.0, metadata=_h("cutmix alpha (0 = off)", check=non_negative_float))
    mixup_prob: float = field(default=1.0, metadata=_h("probability of mixing a batch", check=probability))
    mixup_switch_prob: float = field(
        default=0.5, metadata=_h("probability of cutmix instead of mixup", check=probability)
    )
    mixup_mode: str = field(default="batch", metadata=_h("batch | pair | elem"))
    smoothing: float = field(default=0.1, metadata=_h("label smoothing", check=_UNIT_OPEN))
    num_workers: int = field(
        default=8, metadata=_h("data loader processes per rank (0 = exact resume)", check=non_negative_int)
    )
    val_batch_size: int | None = field(
        default=None, metadata=_h("evaluation batch (None = 2 x batch_size)", check=positive_int)
    )
    synthetic_images: int = field(
        default=12_800, metadata=_h("images per epoch for data=synthetic", check=positive_int)
    )
    synthetic_classes: int = field(
        default=1000, metadata=_h("classes for data=synthetic", check=positive_int)
    )
    # model averaging, precision, speed
    ema: bool = field(default=False, metadata=_h("keep a timm ModelEmaV3 of the weights"))
    ema_decay: float = field(
        default=0.9999,
        metadata=_h("EMA decay per optimizer step", check=float_range(0, 1, low_open=True, high_open=True)),
    )
    amp: str = field(default="auto", metadata=_h("auto (bf16 on GPU, off on CPU) | bf16 | none"))
    compile: bool = field(default=False, metadata=_h("torch.compile the training model"))
    device: str = field(default="auto", metadata=_h("auto | cpu | cuda"))
    threads: int | None = field(
        default=None,
        metadata=_h("torch CPU threads (None = torch default; 1 on a shared, busy CPU)", check=positive_int),
    )
    deterministic: bool | None = field(
        default=None, metadata=_h("torch.use_deterministic_algorithms (None = on for CPU, off for GPU)")
    )
    # bookkeeping
    checkpoint_every: int = field(
        default=0, metadata=_h("also checkpoint every N optimizer steps (0 = epochs)", check=non_negative_int)
    )
    eval_every: int = field(
        default=1, metadata=_h("evaluate every N epochs (and at the end)", check=non_negative_int)
    )
    log_every: int = field(
        default=20, metadata=_h("write a train record every N optimizer steps", check=positive_int)
    )
    progress: bool = field(default=True, metadata=_h("progress bar (only when stderr is a terminal)"))
    plot: bool = field(default=True, metadata=_h("draw metrics.png at every epoch end and at the end"))
    # after training
    recal_epochs: float = field(
        default=0,
        metadata=_h("BN recalibration passes over the train set (frozen)", check=non_negative_float),
    )
    recal_steps: int = field(
        default=0, metadata=_h("BN recalibration batches (adds to recal_epochs)", check=non_negative_int)
    )
    recal_momentum: float | None = field(
        default=None,
        metadata=_h("BN momentum while recalibrating (None = mean)", check=float_range(0, 1, low_open=True)),
    )
    deploy: bool = field(default=True, metadata=_h("fold the final model and write deploy.safetensors"))
    deploy_source: str = field(
        default="last", metadata=_h("last | best | ema: the weights to recalibrate+fold")
    )


#: Per model family (matched on the model name); values may be a dict keyed by size (tiny/small/...).
FAMILY_RECIPES: dict[str, dict[str, Any]] = {
    "deit": {
        "drop_path": 0.0,
        "prepbn_decay": {"slab": 60_000, "deit_small_prepbn": 300_000, "default": 60_000},
    },
    "swin": {
        "drop_path": {"tiny": 0.2, "small": 0.3, "base": 0.5},
        "prepbn_decay": 60_000,
    },
    "pvt": {
        "warmup_epochs": 5,
        "cooldown_epochs": 10,
        "warmup_lr": 1e-6,
        "min_lr": 1e-5,
        "clip_grad": {"medium": 1.0, "default": None},
        "drop_path": {"tiny": 0.0, "small": 0.1, "medium": 0.3},
        "prepbn_decay": 300_000,
    },
    "cswin": {
        "cooldown_epochs": 10,
        "warmup_lr": 1e-6,
        "min_lr": 1e-5,
        "clip_grad": None,
        "drop_path": {"tiny": 0.1, "small": 0.3},
        "prepbn_decay": 120_000,
    },
}

#: Per embedded data set. digits: small real images, light augmentation (no flips: a mirrored 2 is not a 2).
DATA_RECIPES: dict[str, dict[str, Any]] = {
    "digits": {
        "epochs": 15,
        "batch_size": 64,
        "lr": 2e-3,
        "min_lr": 1e-5,
        "warmup_lr": 1e-5,
        "warmup_epochs": 2,
        "weight_decay": 0.05,
        "drop_path": 0.0,
        "input_size": 32,
        "mean": (0.305, 0.305, 0.305),
        "std": (0.376, 0.376, 0.376),
        "crop_pct": 1.0,
        "scale": (0.75, 1.0),
        "ratio": (0.85, 1.18),
        "hflip": 0.0,
        "color_jitter": 0.0,
        "aa": None,
        "reprob": 0.0,
        "mixup": 0.0,
        "cutmix": 0.0,
        "smoothing": 0.1,
        "num_workers": 0,
        "prepbn_decay": 0.6,
        "recal_epochs": 1,
        "log_every": 5,
    },
    "synthetic": {
        "aa": None,
        "reprob": 0.0,
        "mixup": 0.0,
        "cutmix": 0.0,
        "num_workers": 0,
        "epochs": 1,
        "warmup_epochs": 0,
        "eval_every": 0,
        "recal_epochs": 0,
        "deploy": False,
    },
}

_SIZES = ("tiny", "small", "medium", "base", "large")


def _family(model: str) -> str | None:
    for fam in ("cswin", "swin", "pvt", "deit"):  # cswin before swin: "slab_cswin" contains "swin"
        if re.search(rf"(^|_){fam}(_|$)", model):
            return fam
    return None


def _pick(value: Any, model: str) -> Any:
    if not isinstance(value, dict):
        return value
    for key, v in value.items():
        if key != "default" and (key in _SIZES and f"_{key}" in model or key not in _SIZES and key in model):
            return v
    return value.get("default")


def recipe_for(model: str, data: str) -> dict[str, Any]:
    """The recipe layer for `model` trained on `data` (family values, then data values on top)."""
    out: dict[str, Any] = {}
    fam = _family(model)
    for key, value in FAMILY_RECIPES.get(fam, {}).items():
        picked = _pick(value, model)
        if picked is not None or not isinstance(value, dict) or "default" in value:
            out[key] = picked
    out.update(DATA_RECIPES.get(data, {}))
    return out


def resolve_train_config(
    file_values: dict[str, Any] | None = None,
    cli_values: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Build the run config.

    Args:
        file_values: keys from a YAML file.
        cli_values: keys from the command line.
        base: a saved config (resume); replaces the defaults and recipes.
    """
    file_values = file_values or {}
    cli_values = cli_values or {}
    if base is not None:
        return build_config(
            TrainConfig,
            ("checkpoint config", base),
            ("config file", file_values),
            ("command line", cli_values),
        )
    probe = {**file_values, **cli_values}
    model = probe.get("model", TrainConfig.model)
    data = probe.get("data", TrainConfig.data)
    return build_config(
        TrainConfig,
        ("recipe", recipe_for(str(model), str(data))),
        ("config file", file_values),
        ("command line", cli_values),
    )
