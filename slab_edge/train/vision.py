"""The vision training loop: SLAB/DeiT recipe on timm's factories, exact resume, torchrun-ready.

    cfg = resolve_train_config(cli_values={"model": "slab_deit_digits", "data": "digits"})
    result = train_vision(cfg)                       # or train_vision(cfg, resume="runs/x")

One optimizer step = `grad_accum` forwards. Per step, in order: backward, gradient norm (clipped if
clip_grad), non-finite check (all ranks agree), optimizer step, progressive-norm schedule advance, lr
schedule update, EMA update. A skipped (non-finite) update takes no optimizer step and advances no
schedule. After training: BN recalibration (frozen weights), evaluation, folding (reparameterize_model),
evaluation of the folded model (must match within 0.1 point), and the deploy checkpoint.

Run folder:
    config.yaml         resolved config (loadable with --config)
    metrics.jsonl       train / eval / event records;  metrics.png: loss, accuracy, mix weight, lr
    checkpoints/        last.json, best.json + tensor files (see slab_edge.train.checkpoint)
    final.safetensors   recalibrated (unfolded) weights;  deploy.safetensors: folded weights
    summary.json        accuracies, parity, timings

Exact resume (bitwise-identical weights) holds with num_workers=0 and deterministic algorithms: data
order is a function of (seed, epoch), the sampler restarts mid-epoch, and RNG states (python, numpy,
torch CPU/CUDA, per rank) are restored after the data iterator is created. With worker processes the
data order is still exact but augmentation randomness after a mid-epoch resume differs.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slab_edge.errors import CheckpointError, InputError, SlabEdgeError
from slab_edge.io import atomic_write_json, check_output
from slab_edge.layers.norms import advance_progressive_norms, current_mix_weight, set_progressive_schedule
from slab_edge.layers.reparam import fold_metadata
from slab_edge.train.checkpoint import (
    CHECKPOINT_DIR,
    capture_rng_state,
    check_model_identity,
    link_checkpoint,
    load_checkpoint,
    read_manifest,
    resolve_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from slab_edge.train.config import check_config, config_to_dict, save_config
from slab_edge.train.data import DataBundle, ResumableSampler, ShardSampler, build_data, data_classes
from slab_edge.train.distributed import (
    DistInfo,
    broadcast_object,
    gather_objects,
    init_distributed,
    seed_everything,
    wrap_ddp,
)
from slab_edge.train.evaluate import autocast_context, evaluate
from slab_edge.train.guard import NonFiniteError, NonFiniteGuard
from slab_edge.train.logging import VISION_PANELS, MetricsLog, Progress, plot_metrics
from slab_edge.train.model_files import DEPLOY_FILE, build_model, model_meta, resolve_name, save_model_file
from slab_edge.train.recalibrate import recalibrate_bn, sync_bn_stats
from slab_edge.train.recipes import TrainConfig

__all__ = ["FOLD_TOLERANCE_POINTS", "TrainResult", "default_run_dir", "finalize_model", "train_vision"]

#: updates left out of the images/s figure (allocator warm-up, torch.compile)
WARMUP_UPDATES = 5

#: the folded model's held-out accuracy must equal the trained model's within this many points
FOLD_TOLERANCE_POINTS = 0.1

Callback = Callable[[str, dict[str, Any]], None]


@dataclass
class TrainResult:
    """What a finished run reports (also written to summary.json)."""

    run_dir: Path
    steps: int
    epochs: float
    train_seconds: float
    images_per_second: float
    skipped_updates: int
    last_eval: dict[str, Any] = field(default_factory=dict)
    best_acc: float | None = None
    final_eval: dict[str, Any] = field(default_factory=dict)
    deploy_eval: dict[str, Any] = field(default_factory=dict)
    deploy_path: Path | None = None
    recal_batches: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)  # the final (recalibrated, unfolded) model
    folded: nn.Module | None = field(default=None, repr=False)  # its deploy form, when folding ran
    meta: dict[str, Any] = field(default_factory=dict, repr=False)  # model identity + preprocessing


def default_run_dir(cfg: TrainConfig) -> Path:
    data_name = cfg.data if cfg.data in ("digits", "synthetic") else Path(cfg.data).name or "data"
    return Path("runs") / f"{cfg.model}-{data_name}"


def _say(info: DistInfo, *parts: Any) -> None:
    if info.is_main:
        print(*parts, flush=True)


def _warn(info: DistInfo, text: str) -> None:
    if info.is_main:
        print(f"warning: {text}", file=sys.stderr, flush=True)


def _one_line_data_error(err: BaseException) -> InputError:
    """DataLoader workers re-raise with the worker's traceback in the message; keep the last line."""
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else type(err).__name__
    if ": " in last and last.split(": ", 1)[0].endswith("Error"):
        last = last.split(": ", 1)[1]
    return InputError(last)


def _steps_from(value: float | None, total: int) -> int | None:
    """prepbn_decay / prepbn_warmup: absolute steps if >= 1, a fraction of `total` if in (0, 1), 0 = 0."""
    if value is None:
        return None
    if value < 0:
        raise InputError(f"progressive-norm steps must be >= 0, got {value}")
    return int(round(value * total)) if 0 < value < 1 else int(round(value))


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    mode = cfg.amp.lower()
    if mode == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if mode in ("bf16", "bfloat16"):
        return torch.bfloat16
    if mode in ("none", "off", "fp32", "false"):
        return None
    raise InputError(f"amp must be auto | bf16 | none, got {cfg.amp!r}")


def _optimizer(cfg: TrainConfig, model: nn.Module, lr: float):
    from timm.optim import create_optimizer_v2

    kwargs: dict[str, Any] = {}
    if "adam" in cfg.opt.lower():
        kwargs.update(eps=cfg.opt_eps, betas=tuple(cfg.opt_betas))
    try:
        return create_optimizer_v2(
            model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, **kwargs
        )
    except (AssertionError, ValueError) as err:
        raise InputError(f"optimizer {cfg.opt!r}: {err}") from None


def _scheduler(cfg: TrainConfig, optimizer, total_steps: int, updates_per_epoch: int):
    """timm scheduler in units of optimizer steps (so fractional epochs and max_steps just work).

    When max_steps shortens the run, warm-up and cooldown shrink in proportion.
    """
    from timm.scheduler import create_scheduler_v2

    full = max(1.0, (cfg.epochs + cfg.cooldown_epochs) * updates_per_epoch)
    scale = min(1.0, total_steps / full)
    warmup = int(round(cfg.warmup_epochs * updates_per_epoch * scale))
    cooldown = int(round(cfg.cooldown_epochs * updates_per_epoch * scale))
    main = max(1, total_steps - cooldown)
    try:
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=cfg.sched,
            num_epochs=main,
            warmup_epochs=min(warmup, main),
            warmup_lr=cfg.warmup_lr,
            min_lr=cfg.min_lr,
            cooldown_epochs=cooldown,
            step_on_epochs=False,
            updates_per_epoch=1,
        )
    except (AssertionError, ValueError) as err:
        raise InputError(f"scheduler {cfg.sched!r}: {err}") from None
    return scheduler


def _criterion(cfg: TrainConfig, num_classes: int, batch_size: int):
    """(mixup_fn or None, train loss)."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if cfg.mixup > 0 or cfg.cutmix > 0:
        if cfg.mixup_mode == "batch" and batch_size % 2:
            raise InputError(f"mixup/cutmix in batch mode needs an even batch_size, got {batch_size}")
        mixup = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            prob=cfg.mixup_prob,
            switch_prob=cfg.mixup_switch_prob,
            mode=cfg.mixup_mode,
            label_smoothing=cfg.smoothing,
            num_classes=num_classes,
        )
        return mixup, SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return None, nn.CrossEntropyLoss()


def _loader(
    dataset, batch_size: int, sampler, cfg: TrainConfig, device: torch.device, drop_last: bool, seed: int
):
    from torch.utils.data import DataLoader

    # A private generator: creating an iterator must not consume the global torch RNG (exact resume).
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        drop_last=drop_last,
        pin_memory=device.type == "cuda",
        generator=generator,
    )


def _grad_norm(params: list[torch.Tensor], clip: float | None) -> torch.Tensor:
    """Total gradient norm before clipping (clips in place when `clip` is set)."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.clip_grad_norm_(grads, clip if clip else float("inf"), foreach=None)


class _Run:
    """State of one training run (kept in one object so checkpointing sees everything)."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, resume: str | None, callbacks: Iterable[Callback]):
        self.cfg, self.info = cfg, info
        self.callbacks = list(callbacks)
        self.resume_path = resume
        self.run_dir = Path(cfg.output) if cfg.output else default_run_dir(cfg)
        self.ckpt_dir = self.run_dir / CHECKPOINT_DIR
        self.device = info.device
        self.amp_dtype = _amp_dtype(cfg, self.device)
        # position
        self.epoch = 0
        self.batch_in_epoch = 0  # micro-batches consumed in the current epoch (per rank)
        self.update = 0  # updates attempted
        self.step = 0  # optimizer steps taken
        self.best_acc: float | None = None
        self.last_eval: dict[str, Any] = {}
        self.pending_rng: tuple[dict, dict] | None = None
        self.train_time = 0.0  # wall time of every update (data loading included; eval/checkpoints not)
        self.steady_time = 0.0  # the same after the first WARMUP_UPDATES updates of this process
        self.images_timed = 0  # images in steady_time (all ranks)

    # ----------------------------------------------------------------------------------------- setup
    def check_output(self) -> None:
        """Rank 0 validates the run folder; every rank raises the same error. Nothing is created here: the
        folder appears with the first file written, once every check of `setup` has passed."""
        problem = None
        if self.info.is_main:
            try:
                check_output(self.run_dir, folder=True, label="run folder")
                last = self.ckpt_dir / "last.json"
                if self.resume_path is None and last.exists() and not self.cfg.overwrite:
                    problem = (
                        f"run folder {self.run_dir} already holds a run ({last}); pass "
                        f"--resume {self.run_dir} to continue it, --overwrite to start over, "
                        "or another --output"
                    )
                elif self.resume_path is None and self.cfg.overwrite and self.ckpt_dir.is_dir():
                    for manifest in self.ckpt_dir.glob("*.json"):
                        manifest.unlink()
                    from slab_edge.train.checkpoint import collect_garbage

                    collect_garbage(self.ckpt_dir)
            except SlabEdgeError as err:
                problem = str(err)
        problem = broadcast_object(problem, self.info)
        if problem:
            raise InputError(problem)

    def setup(self) -> None:
        cfg, info = self.cfg, self.info
        if cfg.batch_size < 1 or cfg.grad_accum < 1:
            raise InputError("batch_size and grad_accum must be >= 1")
        resolve_name(cfg.model)  # cheap checks first: nothing is written for a typo
        classes, scanned = data_classes(cfg)
        self.ckpt = None
        if self.resume_path is not None:
            manifest_path = resolve_checkpoint(self.resume_path)
            self.ckpt = load_checkpoint(manifest_path)
            check_model_identity(self.ckpt.meta, cfg.model, cfg.model_kwargs, f"checkpoint {manifest_path}")
        self.check_output()
        seed_everything(cfg.seed)  # identical initial weights on every rank
        self.model = build_model(cfg.model, cfg.model_kwargs, len(classes), cfg.drop_path).to(self.device)
        from timm.data import resolve_data_config

        self.data: DataBundle = build_data(cfg, resolve_data_config({}, model=self.model), (classes, scanned))
        seed_everything(cfg.seed + info.rank)  # augmentation and drop path differ per rank
        self.build_loaders()
        self.total_updates = int(round((cfg.epochs + cfg.cooldown_epochs) * self.updates_per_epoch))
        if cfg.max_steps:  # a shorter run: the lr and progressive-norm schedules are fit to it
            self.total_updates = min(self.total_updates, int(cfg.max_steps))
        self.global_batch = cfg.batch_size * cfg.grad_accum * info.world_size
        self.peak_lr = cfg.lr if cfg.lr is not None else cfg.base_lr * self.global_batch / cfg.lr_base_size
        self.optimizer = _optimizer(cfg, self.model, self.peak_lr)
        self.scheduler = _scheduler(cfg, self.optimizer, self.total_updates, self.updates_per_epoch)
        self.mixup, self.criterion = _criterion(cfg, self.data.num_classes, cfg.batch_size)
        self.guard = NonFiniteGuard(cfg.nonfinite_patience)
        self.ema = None
        if cfg.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay)
        self.meta = model_meta(
            cfg.model, cfg.model_kwargs, self.data.num_classes, self.data.data_config, self.data.labels
        )
        self.prepbn = self.setup_progressive()
        if self.ckpt is not None:
            self.restore(self.ckpt)
        self.train_model = wrap_ddp(self.model, info)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        self.log = MetricsLog(
            self.run_dir / "metrics.jsonl", resume_step=self.step if self.ckpt else None, enabled=info.is_main
        )
        if info.is_main:
            from slab_edge import __version__

            save_config(cfg, self.run_dir, header=f"slab-edge {__version__} resolved training config")

    def build_loaders(self) -> None:
        cfg, info, data = self.cfg, self.info, self.data
        if data.kind == "synthetic":
            self.train_loader = data.train.to(self.device)
            self.sampler = None
            self.val_loader = None
            self.batches_per_epoch = data.train.batches_per_epoch
        else:
            self.sampler = ResumableSampler(
                data.train, info.world_size, info.rank, shuffle=True, seed=cfg.seed
            )
            self.train_loader = _loader(
                data.train, cfg.batch_size, self.sampler, cfg, self.device, True, cfg.seed
            )
            self.batches_per_epoch = len(self.train_loader)
            vbs = cfg.val_batch_size or 2 * cfg.batch_size
            self.val_loader = _loader(
                data.val, vbs, ShardSampler(data.val, info.world_size, info.rank), cfg, self.device, False, 0
            )
        self.updates_per_epoch = self.batches_per_epoch // cfg.grad_accum
        if self.updates_per_epoch < 1:
            n = len(data.train) if data.kind != "synthetic" else cfg.synthetic_images
            raise InputError(
                f"the training set ({n} images over {info.world_size} process(es)) is smaller than one "
                f"optimizer step of batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum}"
            )

    def setup_progressive(self) -> dict[str, Any]:
        cfg = self.cfg
        decay = _steps_from(cfg.prepbn_decay, self.total_updates)
        warmup = _steps_from(cfg.prepbn_warmup, self.total_updates)
        touched = set_progressive_schedule(self.model, decay_steps=decay, warmup_steps=warmup, step=0)
        out = {"norms": touched, "decay_steps": decay, "warmup_steps": warmup}
        if touched:
            from slab_edge.layers.norms import progressive_norms

            norm = progressive_norms(self.model)[0]
            out["decay_steps"], out["warmup_steps"] = int(norm.decay_steps), int(norm.warmup_steps)
            end = out["decay_steps"] + out["warmup_steps"]
            if end > self.total_updates:
                g_end = 1.0 - max(0, self.total_updates - out["warmup_steps"]) / max(1, out["decay_steps"])
                _warn(
                    self.info,
                    f"the LN->RepBN schedule ends at step {end} but the run has {self.total_updates} steps: "
                    f"the LN weight will still be {max(g_end, 0.0):.2f} at the end (inference uses RepBN "
                    "only); set prepbn_decay to a fraction such as 0.8",
                )
        return out

    def restore(self, ckpt) -> None:
        state = ckpt.state
        try:
            self.model.load_state_dict(ckpt.model_state, strict=True)
            if self.ema is not None:
                if ckpt.ema_state is None:
                    raise CheckpointError(f"checkpoint {ckpt.path} has no EMA weights but ema is on")
                self.ema.module.load_state_dict(ckpt.ema_state, strict=True)
                if "ema_sr_generator" in ckpt.extra_tensors:
                    self.ema._sr_generator.set_state(ckpt.extra_tensors["ema_sr_generator"])
            if ckpt.optimizer_state is not None:
                self.optimizer.load_state_dict(ckpt.optimizer_state)
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(
                f"checkpoint {ckpt.path} does not fit this run: {str(err).strip().splitlines()[0]}"
            ) from None
        pos = state.get("position", {})
        self.epoch = int(pos.get("epoch", 0))
        self.batch_in_epoch = int(pos.get("batch_in_epoch", 0))
        self.update = int(pos.get("update", 0))
        self.step = int(pos.get("step", ckpt.manifest.get("step", 0)))
        if self.batch_in_epoch % self.cfg.grad_accum:
            raise CheckpointError(f"checkpoint {ckpt.path} was saved mid-accumulation; cannot resume exactly")
        self.best_acc = state.get("best_acc")
        self.guard.load_state_dict(state.get("guard", {}))
        self.train_time = float(state.get("train_time", 0.0))
        self.steady_time = float(state.get("steady_time", 0.0))
        self.images_timed = int(state.get("images_timed", 0))
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.step)
        saved_world = int(state.get("world_size", 1))
        if saved_world == self.info.world_size and self.info.rank < len(ckpt.rng_states):
            self.pending_rng = ckpt.rng_states[self.info.rank]
        else:
            _warn(
                self.info,
                f"checkpoint was written by {saved_world} process(es), this job has {self.info.world_size}: "
                "data order continues exactly, random augmentation does not",
            )
        _say(
            self.info,
            f"resumed from {ckpt.path} at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})",
        )

    # ----------------------------------------------------------------------------------------- bookkeeping
    def mix_weight(self) -> float | None:
        return current_mix_weight(self.model)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def emit(self, event: str, **payload: Any) -> None:
        for cb in self.callbacks:
            cb(event, {"step": self.step, "update": self.update, "epoch": self.epoch, **payload})

    def save(self, tag: str = "last", also_best: bool = False) -> None:
        """Checkpoint on rank 0 (RNG states of all ranks are gathered first; every rank must call this)."""
        rng = gather_objects(capture_rng_state(), self.info)
        if not self.info.is_main:
            return
        extra = {}
        if self.ema is not None:
            extra["ema_sr_generator"] = self.ema._sr_generator.get_state()
        state = {
            "position": {
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "update": self.update,
                "step": self.step,
            },
            "world_size": self.info.world_size,
            "best_acc": self.best_acc,
            "last_eval": self.last_eval,
            "guard": self.guard.state_dict(),
            "train_time": self.train_time,
            "steady_time": self.steady_time,
            "images_timed": self.images_timed,
            "mix_weight": self.mix_weight(),
            "lr": self.lr(),
        }
        save_checkpoint(
            self.ckpt_dir,
            tag,
            step=self.step,
            model_state=self.model.state_dict(),
            meta=self.meta,
            state=state,
            config=config_to_dict(self.cfg),
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            ema_state=self.ema.module.state_dict() if self.ema is not None else None,
            rng_states=rng,
            extra_tensors=extra,
        )
        if also_best:
            link_checkpoint(self.ckpt_dir, tag, "best")
        self.emit("checkpoint", tag=tag)

    def evaluate_now(self) -> dict[str, Any]:
        if self.val_loader is None:
            return {}
        res = evaluate(self.model, self.val_loader, self.device, self.amp_dtype, self.info)
        out = {"acc": res["acc"], "loss": res["loss"], "n": res["n"]}
        if self.ema is not None:
            out["ema_acc"] = evaluate(
                self.ema.module, self.val_loader, self.device, self.amp_dtype, self.info
            )["acc"]
        self.log.write("eval", step=self.step, epoch=self.epoch, **out)
        self.last_eval = out
        return out

    def plot(self) -> None:
        if self.info.is_main and self.cfg.plot:
            plot_metrics(
                self.log.records(), self.run_dir / "metrics.png", VISION_PANELS, title=self.cfg.model
            )

    # ----------------------------------------------------------------------------------------- loop
    def next_batch(self, it):
        try:
            images, targets = next(it)
        except StopIteration:
            raise SlabEdgeError("data loader ran out of batches mid-epoch (internal error)") from None
        except SlabEdgeError as err:
            raise _one_line_data_error(err) from None
        except (OSError, RuntimeError) as err:
            if "DataLoader worker" in str(err) or "Caught" in str(err):
                raise _one_line_data_error(err) from None
            raise
        return images.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)

    def train_update(self, it) -> tuple[float, float, bool]:
        """One optimizer update over grad_accum micro-batches. Returns (loss, grad_norm, taken)."""
        cfg = self.cfg
        ddp = self.info.enabled
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            images, targets = self.next_batch(it)
            if self.mixup is not None:
                images, targets = self.mixup(images, targets)
            no_sync = ddp and micro < cfg.grad_accum - 1
            sync_ctx = unwrap_ddp(self.train_model).no_sync() if no_sync else contextlib.nullcontext()
            with sync_ctx:
                with autocast_context(self.device, self.amp_dtype):
                    output = self.train_model(images)
                    loss = self.criterion(output, targets)
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach().float() / cfg.grad_accum
            self.batch_in_epoch += 1
        grad_norm = _grad_norm(list(self.model.parameters()), cfg.clip_grad)
        # one collective for both numbers: every rank takes the same skip decision
        stats = torch.stack([loss_sum.float(), grad_norm.float().to(self.device)])
        if ddp:
            import torch.distributed as dist

            dist.all_reduce(stats)
            stats[0] /= self.info.world_size
        loss_val, norm_val = (float(v) for v in stats.tolist())
        if ddp:
            norm_val = float(grad_norm)  # clip_grad_norm_ already saw the all-reduced gradients
        try:
            verdict = self.guard.check(
                loss_val, norm_val, step=self.step, mix_weight=self.mix_weight(), lr=self.lr()
            )
        except NonFiniteError as err:
            self.log.write("event", step=self.step, epoch=self.epoch, event="stopped", reason=str(err))
            self.plot()
            raise
        self.update += 1
        if verdict.skip:
            self.optimizer.zero_grad(set_to_none=True)
            self.log.write(
                "event",
                step=self.step,
                epoch=self.epoch,
                event="skipped_update",
                reason=verdict.reason,
                mix_weight=self.mix_weight(),
                lr=self.lr(),
            )
            _warn(
                self.info,
                f"skipped update at step {self.step}: {verdict.reason} "
                f"({self.guard.consecutive} in a row, limit {self.guard.patience})",
            )
            return loss_val, norm_val, False
        self.optimizer.step()
        self.step += 1
        advance_progressive_norms(self.model)
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.step)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        return loss_val, norm_val, True

    def epoch_batches(self) -> int:
        return self.updates_per_epoch * self.cfg.grad_accum

    def run(self) -> None:
        cfg, info = self.cfg, self.info
        # every update ends in a host sync (the loss/grad-norm check), so per-update wall times are honest
        timed_from = self.update + WARMUP_UPDATES  # skip warm-up / torch.compile updates for images/s
        while self.update < self.total_updates:
            if self.sampler is not None:
                self.sampler.set_position(self.epoch, self.batch_in_epoch * cfg.batch_size)
                self.train_loader.generator.manual_seed(cfg.seed * 1_000_003 + self.epoch)
            else:
                self.train_loader.start_batch = self.batch_in_epoch
            it = iter(self.train_loader)
            if self.pending_rng is not None:
                restore_rng_state(*self.pending_rng)
                self.pending_rng = None
            self.train_model.train()
            bar = Progress(
                self.updates_per_epoch,
                desc=f"epoch {self.epoch + 1}/{math.ceil(self.total_updates / self.updates_per_epoch)}",
                enabled=info.is_main and cfg.progress,
                initial=self.batch_in_epoch // cfg.grad_accum,
            )
            try:
                while self.batch_in_epoch < self.epoch_batches() and self.update < self.total_updates:
                    t0 = time.perf_counter()
                    loss, norm, taken = self.train_update(it)
                    dt = time.perf_counter() - t0
                    self.train_time += dt
                    if self.update > timed_from:
                        self.steady_time += dt
                        self.images_timed += self.global_batch
                    g = self.mix_weight()
                    bar.update(1, loss=loss, lr=self.lr(), g=g)
                    if taken and self.step % max(1, cfg.log_every) == 0:
                        self.log.write(
                            "train",
                            step=self.step,
                            epoch=self.epoch,
                            loss=loss,
                            lr=self.lr(),
                            lr_rel=self.lr() / self.peak_lr,
                            mix_weight=g,
                            grad_norm=norm,
                            seconds_per_step=round(dt, 5),
                        )
                    end_of_epoch = self.batch_in_epoch >= self.epoch_batches()
                    if cfg.checkpoint_every and self.update % cfg.checkpoint_every == 0 and not end_of_epoch:
                        self.save("last")
                    self.emit("step", loss=loss, taken=taken, mix_weight=g, lr=self.lr())
            finally:
                bar.close()
            if self.batch_in_epoch >= self.epoch_batches():
                self.epoch += 1
                self.batch_in_epoch = 0
            self.end_of_epoch()  # also when max_steps ends the run mid-epoch

    def skipped_images(self) -> int:
        """Unreadable images skipped so far (shared counter of the ImageFolder datasets; this rank)."""
        return sum(
            int(getattr(ds, "skipped", 0)) for ds in (self.data.train, self.data.val) if ds is not None
        )

    def end_of_epoch(self) -> None:
        cfg = self.cfg
        done = self.update >= self.total_updates
        skipped = self.skipped_images()
        if skipped:
            self.log.write("event", step=self.step, epoch=self.epoch, event="skipped_images", count=skipped)
            _warn(self.info, f"{skipped} unreadable image(s) skipped so far (see the warnings naming them)")
        ev = {}
        if self.val_loader is not None and cfg.eval_every and (self.epoch % cfg.eval_every == 0 or done):
            ev = self.evaluate_now()
            acc = ev["acc"]
            improved = self.best_acc is None or acc > self.best_acc
            if improved:
                self.best_acc = acc
            self.save("last", also_best=improved)
            _say(
                self.info,
                f"epoch {self.epoch}: step {self.step}, held-out top-1 {acc:.2f}% "
                f"(best {self.best_acc:.2f}%), loss {ev['loss']:.4f}"
                + (f", mix weight {self.mix_weight():.3f}" if self.mix_weight() is not None else ""),
            )
        else:
            self.save("last")
        self.plot()
        self.emit("epoch", eval=ev)


def unwrap_ddp(model: nn.Module) -> nn.Module:
    """The DDP wrapper under a torch.compile wrapper (no_sync lives there)."""
    return getattr(model, "_orig_mod", model)


def _repeat(loader, batches: int):
    """`batches` batches from `loader`, cycling through it as often as needed."""
    return itertools.islice(itertools.chain.from_iterable(itertools.repeat(loader)), batches)


def finalize_model(
    model: nn.Module,
    *,
    recal_loader=None,
    recal_batches: int = 0,
    recal_momentum: float | None = None,
    val_loader=None,
    device: torch.device | str = "cpu",
    info: DistInfo | None = None,
    fold: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Recalibrate BN -> evaluate -> fold -> evaluate folded; the demo and the trainer share this.

    Returns:
        {"model": recalibrated model, "recal_batches", "eval": {...}, "folded": folded model or None,
         "folded_eval": {...}, "parity": {"acc_diff_points", "max_logit_diff"}, "fold_error": str|None}
    """
    from slab_edge.layers.reparam import FoldCheckError, reparameterize_model
    from slab_edge.train.evaluate import predict_logits

    info = info or DistInfo(device=torch.device(device))
    device = torch.device(device)
    say = log or (lambda s: None)
    out: dict[str, Any] = {
        "model": model,
        "recal_batches": 0,
        "eval": {},
        "folded": None,
        "folded_eval": {},
        "parity": {},
        "fold_error": None,
    }
    if recal_loader is not None and recal_batches > 0:
        t0 = time.perf_counter()
        out["recal_batches"] = recalibrate_bn(
            model, _repeat(recal_loader, recal_batches), momentum=recal_momentum, device=device
        )
        sync_bn_stats(model, info)
        say(
            f"recalibrated BN statistics over {out['recal_batches']} batches "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    model.eval()
    if val_loader is not None:
        out["eval"] = evaluate(model, val_loader, device, None, info)
    if not fold:
        return out
    try:
        folded = reparameterize_model(model)
    except FoldCheckError as err:
        out["fold_error"] = str(err)
        return out
    out["folded"] = folded
    if val_loader is not None:
        out["folded_eval"] = evaluate(folded, val_loader, device, None, info)
        a = predict_logits(model, val_loader, device)
        b = predict_logits(folded, val_loader, device)
        out["parity"] = {
            "acc_diff_points": abs(out["folded_eval"]["acc"] - out["eval"]["acc"]),
            "max_logit_diff": float((a - b).abs().max()) if a.numel() else 0.0,
            "prediction_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean() * 100)
            if a.numel()
            else 100.0,
        }
    return out


def _final_phase(run: _Run) -> TrainResult:
    cfg, info = run.cfg, run.info
    model = run.model
    if cfg.deploy_source == "ema":
        if run.ema is None:
            raise InputError("deploy_source 'ema' needs ema: true")
        model = run.ema.module
    elif cfg.deploy_source == "best":
        best = run.ckpt_dir / "best.json"
        if best.exists():
            ckpt = load_checkpoint(best)
            model.load_state_dict(ckpt.model_state)
            _say(info, f"final model: best checkpoint (step {ckpt.manifest['step']})")
    elif cfg.deploy_source != "last":
        raise InputError(f"deploy_source must be last | best | ema, got {cfg.deploy_source!r}")
    recal_loader = None
    recal_batches = 0
    if run.data.kind != "synthetic" and (cfg.recal_epochs or cfg.recal_steps):
        ds = run.data.train_eval
        recal_loader = _loader(
            ds, cfg.batch_size, ShardSampler(ds, info.world_size, info.rank), cfg, run.device, True, 0
        )
        recal_batches = int(round(cfg.recal_epochs * len(recal_loader))) + int(cfg.recal_steps)
    fin = finalize_model(
        model,
        recal_loader=recal_loader,
        recal_batches=recal_batches,
        recal_momentum=cfg.recal_momentum,
        val_loader=run.val_loader,
        device=run.device,
        info=info,
        fold=cfg.deploy,
        log=lambda s: _say(info, s),
    )
    summary: dict[str, Any] = {
        "model": cfg.model,
        "data": cfg.data,
        "steps": run.step,
        "epochs": run.update / max(1, run.updates_per_epoch),
        "global_batch": run.global_batch,
        "peak_lr": run.peak_lr,
        "world_size": info.world_size,
        "device": str(run.device),
        "amp": str(run.amp_dtype),
        "train_seconds": round(run.train_time, 3),
        "images_per_second": round(run.images_timed / run.steady_time, 2) if run.steady_time > 0 else None,
        "images_per_second_note": f"steady state: updates after the first {WARMUP_UPDATES} of each process",
        "skipped_updates": run.guard.total_skipped,
        "skipped_images": run.skipped_images(),
        "progressive": run.prepbn,
        "last_eval": run.last_eval,
        "best_acc": run.best_acc,
        "recal_batches": fin["recal_batches"],
        "final_eval": fin["eval"],
    }
    deploy_path = None
    if info.is_main:
        meta = dict(run.meta)
        save_model_file(run.run_dir / "final.safetensors", model, {**meta, "metrics": fin["eval"]})
    if cfg.deploy and run.data.kind != "synthetic":
        if fin["fold_error"]:
            _warn(
                info, f"no deploy checkpoint: {fin['fold_error']} (this model keeps norms that cannot fold)"
            )
            summary["deploy_error"] = fin["fold_error"]
        else:
            summary["deploy_eval"] = fin["folded_eval"]
            summary["parity"] = fin["parity"]
            diff = fin["parity"].get("acc_diff_points", 0.0)
            if diff > FOLD_TOLERANCE_POINTS:
                raise SlabEdgeError(
                    f"folded model top-1 {fin['folded_eval']['acc']:.2f}% differs from the trained model's "
                    f"{fin['eval']['acc']:.2f}% by {diff:.2f} points (> {FOLD_TOLERANCE_POINTS}); deploy "
                    "checkpoint not written (a folding bug: please report it)"
                )
            if info.is_main:
                meta = {
                    **run.meta,
                    "deploy": True,
                    **fold_metadata(fin["folded"], fin["model"]),
                    "metrics": {"acc": fin["folded_eval"].get("acc"), "acc_unfolded": fin["eval"].get("acc")},
                }
                deploy_path = save_model_file(run.run_dir / DEPLOY_FILE, fin["folded"], meta)
                summary["deploy_path"] = str(deploy_path)
    run.log.write(
        "final",
        step=run.step,
        epoch=run.epoch,
        acc=fin["eval"].get("acc"),
        deploy_acc=fin["folded_eval"].get("acc"),
    )
    if info.is_main:
        atomic_write_json(run.run_dir / "summary.json", summary)
        run.plot()
    return TrainResult(
        run_dir=run.run_dir,
        steps=run.step,
        epochs=summary["epochs"],
        train_seconds=run.train_time,
        images_per_second=summary["images_per_second"] or 0.0,
        skipped_updates=run.guard.total_skipped,
        last_eval=run.last_eval,
        best_acc=run.best_acc,
        final_eval=fin["eval"],
        deploy_eval=fin["folded_eval"],
        deploy_path=deploy_path,
        recal_batches=fin["recal_batches"],
        summary=summary,
        model=model,
        folded=fin["folded"],
        meta=run.meta,
    )


@contextlib.contextmanager
def _deterministic(enabled: bool, device: torch.device):
    previous = torch.are_deterministic_algorithms_enabled()
    prev_bench = torch.backends.cudnn.benchmark
    if enabled:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark = prev_bench


def train_vision(
    cfg: TrainConfig, resume: str | os.PathLike | None = None, callbacks: Iterable[Callback] = ()
) -> TrainResult:
    """Train, recalibrate, fold and evaluate one vision model; see the module docstring.

    Args:
        cfg: the resolved config (`resolve_train_config`).
        resume: a run folder or checkpoint manifest to continue from (its model must match cfg.model).
        callbacks: called as cb(event, info) for events "step", "epoch", "checkpoint".

    Under torchrun the process group stays up after return (several runs may share it); the entry point
    calls `slab_edge.train.distributed.cleanup_distributed()` once at the end.

    Raises:
        SlabEdgeError (InputError, CheckpointError, NonFiniteError): bad input or a run that cannot go on.
    """
    check_config(cfg)  # a config built in code skipped build_config's range checks
    info = init_distributed(cfg.device)
    deterministic = cfg.deterministic if cfg.deterministic is not None else info.device.type == "cpu"
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    try:
        with _deterministic(deterministic, info.device):
            run = _Run(cfg, info, None if resume is None else str(resume), callbacks)
            run.setup()
            _say(
                info,
                f"training {cfg.model} on {cfg.data}: {run.total_updates} steps "
                f"({run.updates_per_epoch}/epoch, global batch {run.global_batch}, "
                f"peak lr {run.peak_lr:.3g}, {info.world_size} process(es) on {run.device}, "
                f"amp {run.amp_dtype or 'off'}) -> {run.run_dir}",
            )
            if run.prepbn["norms"]:
                _say(
                    info,
                    f"progressive norms: {run.prepbn['norms']}, LN->RepBN over "
                    f"{run.prepbn['decay_steps']} steps after {run.prepbn['warmup_steps']} LN-only steps",
                )
            run.run()
            result = _final_phase(run)
            _report(info, result)
            return result
    finally:
        torch.set_num_threads(threads)


def _report(info: DistInfo, result: TrainResult) -> None:
    s = result.summary
    lines = [f"run folder: {result.run_dir}"]
    if s.get("images_per_second"):
        lines.append(
            f"training: {result.steps} steps in {result.train_seconds:.1f} s, "
            f"{s['images_per_second']:.1f} images/s after {WARMUP_UPDATES} warm-up steps "
            f"({s['world_size']} process(es), global batch {s['global_batch']})"
        )
    if result.final_eval:
        state = "recalibrated, unfolded" if result.recal_batches else "unfolded"
        lines.append(f"held-out top-1 ({state}): {result.final_eval['acc']:.2f}%")
    if result.deploy_eval:
        p = s.get("parity", {})
        lines.append(
            f"folded (deploy) top-1: {result.deploy_eval['acc']:.2f}% "
            f"(diff {p.get('acc_diff_points', 0):.2f} points, "
            f"max |logit diff| {p.get('max_logit_diff', 0):.2e}) -> {result.deploy_path}"
        )
    if result.skipped_updates:
        lines.append(f"skipped non-finite updates: {result.skipped_updates}")
    _say(info, "\n".join(lines))


def load_run_config(resume: str | os.PathLike) -> dict[str, Any]:
    """The config dict saved in a checkpoint (for `--resume` without repeating every flag)."""
    manifest = read_manifest(resolve_checkpoint(resume))
    return dict(manifest.get("config") or {})


def summary_of(run_dir: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "summary.json").read_text())
