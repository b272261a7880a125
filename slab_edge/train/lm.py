"""`slab-edge train-lm`: next-token training of SLAB-LM on a text corpus (default: Python's stdlib sources).

Shares the vision trainer's machinery: layered config (train/config.py), crash-safe checkpoints with exact
resume (train/checkpoint.py), torchrun/DDP setup (train/distributed.py), progress bar + JSONL metrics +
PNG plot (train/logging.py) and the non-finite guard (train/guard.py). What is LM-specific lives here:
the token-window sampler, validation loss / bits per byte, and the recipe.

Recipe (REFERENCE §5, the GLA paper's): AdamW (timm factory: no weight decay on biases, norms and other 1-D
parameters), lr 3e-4 (1e-3 for the tiny CI model), weight decay 0.01, betas (0.9, 0.95), gradient clipping
1.0, linear warm-up then cosine to lr/10. The progressive norm (norm=prepbn) counts optimizer steps: the
paper's LLaMA run keeps RMSNorm for 10k steps and then fades to RepBN over 18k; here both lengths are
fractions of the run with that 10:18 ratio (0.2 and 0.36 by default), so the last ~44 % of training already
trains the RepBN-only network that is folded and deployed. Values >= 1 are absolute optimizer steps.
After the last step the RepBN running statistics are re-estimated with frozen weights (SLAB's final phase,
`recal_steps` batches, cumulative average) before the final validation and the saved model.
Validation runs the eval-mode network (PRepBN = RepBN with running statistics, exactly what is folded and
exported), so during the RMSNorm phase of a prepbn run its numbers describe the still untrained RepBN path.

Batches are windows of seq_len + 1 tokens at uniformly random offsets of the training stream, drawn from a
generator seeded by (seed, step, micro-batch, rank): the data order is a pure function of the step, so a
resumed run continues exactly where the interrupted one would have been (tests/train/test_lm_train.py).

    slab-edge train-lm --model tiny --attention sla --norm prepbn --steps 300 --output runs/lm-tiny
    slab-edge train-lm --attention gla --attention-pattern LLLS --model-kwargs "{num_layers: 4}"  # 3:1 hybrid
    torchrun --nproc-per-node 8 -m slab_edge.cli train-lm --model 125M --attention gla --steps 20000

Run folder: config.yaml, metrics.jsonl, metrics.png, checkpoints/, model.safetensors (final weights with
their metadata), summary.json and tokenizer.json (BPE runs).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slab_edge.commands.argtypes import (
    Number,
    float_range,
    int_range,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from slab_edge.data.text import TextCorpus, bits_per_byte, load_corpus, token_byte_lengths
from slab_edge.data.text_tokenizer import DEFAULT_BPE_FILE, BPETokenizer, ByteTokenizer, Tokenizer, train_bpe
from slab_edge.errors import CheckpointError, InputError
from slab_edge.io import atomic_write_json
from slab_edge.train.checkpoint import (
    CHECKPOINT_DIR,
    capture_rng_state,
    load_checkpoint,
    read_safetensors,
    resolve_checkpoint,
    restore_rng_state,
    save_checkpoint,
    write_safetensors,
)
from slab_edge.train.config import check_config, config_to_dict, save_config
from slab_edge.train.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup_distributed,
    gather_objects,
    init_distributed,
    seed_everything,
    unwrap_model,
    wrap_ddp,
)
from slab_edge.train.evaluate import autocast_context
from slab_edge.train.guard import NonFiniteGuard
from slab_edge.train.logging import MetricsLog, Progress, plot_metrics, read_metrics
from slab_edge.train.recalibrate import batchnorm_layers, recalibrate_bn, sync_bn_stats

__all__ = [
    "LM_FORMAT",
    "LMTrainConfig",
    "build_lm",
    "evaluate_lm",
    "load_lm",
    "lm_meta",
    "resolve_lm_config",
    "sample_batch",
    "train_lm",
]

LM_FORMAT = "slab-edge-lm/1"
MODEL_FILE = "model.safetensors"
SUMMARY_FILE = "summary.json"

#: panels of metrics.png for LM runs
LM_PLOT_PANELS: dict[str, list[tuple[str, str, str]]] = {
    "loss (nats/token)": [("train", "loss", "train loss"), ("eval", "loss", "validation loss")],
    "bits per byte": [("eval", "bpb", "validation bpb")],
    "LN mix weight g / lr": [("train", "mix_weight", "mix weight g"), ("train", "lr_rel", "lr / peak lr")],
}


def _h(text: str, check: Number | None = None) -> dict[str, Any]:
    return {"help": text, "check": check}


@dataclass
class LMTrainConfig:
    """Every knob of `slab-edge train-lm`."""

    # model
    model: str = field(default="tiny", metadata=_h("SLAB-LM size: tiny | 125m | 350m"))
    attention: str = field(default="sla", metadata=_h("token mixer: sla | gla | softmax"))
    attention_pattern: str | None = field(
        default=None,
        metadata=_h("hybrid: one letter per layer, repeated (L = --attention, S = softmax), e.g. LLLS"),
    )
    norm: str = field(default="prepbn", metadata=_h("rmsnorm | prepbn (RMSNorm fading into RepBN)"))
    model_kwargs: dict = field(default_factory=dict, metadata=_h("extra SLAB-LM builder kwargs"))
    # data
    corpus: str = field(
        default="stdlib", metadata=_h("stdlib (Python's own sources) | a text file or folder")
    )
    max_corpus_bytes: int | None = field(
        default=None, metadata=_h("read at most this many corpus bytes", check=positive_int)
    )
    val_fraction: float = field(
        default=0.05,
        metadata=_h(
            "share of files held out for validation", check=float_range(0, 1, low_open=True, high_open=True)
        ),
    )
    tokenizer: str = field(default="byte", metadata=_h("byte | bpe (train one locally) | a tokenizer.json"))
    bpe_vocab: int = field(
        default=4096, metadata=_h("vocabulary size of a locally trained BPE", check=int_range(258))
    )
    seq_len: int = field(default=256, metadata=_h("tokens per training window", check=positive_int))
    # run
    output: str | None = field(
        default=None, metadata=_h("run folder (default runs/lm-<model>-<attention>[-<pattern>]-<norm>)")
    )
    overwrite: bool = field(default=False, metadata=_h("replace a run already in the output folder"))
    resume: bool = field(
        default=False, metadata=_h("continue the run in the output folder from its last checkpoint")
    )
    seed: int = field(default=0, metadata=_h("seed for weights and data order", check=non_negative_int))
    steps: int = field(default=2000, metadata=_h("optimizer steps", check=positive_int))
    max_seconds: float | None = field(
        default=None, metadata=_h("also stop after this much training time", check=positive_float)
    )
    stop_at_step: int | None = field(
        default=None,
        metadata=_h(
            "end this session at this step (schedules still span --steps; --resume goes on)",
            check=positive_int,
        ),
    )
    batch_size: int = field(default=16, metadata=_h("windows per process per forward", check=positive_int))
    grad_accum: int = field(default=1, metadata=_h("forwards per optimizer step", check=positive_int))
    # optimizer and schedule
    lr: float | None = field(
        default=None, metadata=_h("peak lr (None: 1e-3 for tiny, else 3e-4)", check=positive_float)
    )
    min_lr_ratio: float = field(
        default=0.1, metadata=_h("cosine floor as a fraction of the peak lr", check=probability)
    )
    warmup: float = field(
        default=0.02,
        metadata=_h("lr warm-up: steps if >= 1, fraction of steps if < 1", check=non_negative_float),
    )
    weight_decay: float = field(
        default=0.01,
        metadata=_h("AdamW decoupled weight decay (not on 1-D params)", check=non_negative_float),
    )
    opt_betas: tuple[float, float] = field(
        default=(0.9, 0.95), metadata=_h("AdamW betas", check=float_range(0, 1, high_open=True))
    )
    clip_grad: float | None = field(
        default=1.0, metadata=_h("clip the gradient norm (None = off)", check=positive_float)
    )
    prepbn_warmup: float = field(
        default=0.2, metadata=_h("RMSNorm-only steps (fraction of steps if < 1)", check=non_negative_float)
    )
    prepbn_decay: float = field(
        default=0.36, metadata=_h("RMSNorm->RepBN fade length (fraction if < 1)", check=non_negative_float)
    )
    recal_steps: int = field(
        default=50,
        metadata=_h(
            "after training: batches that re-estimate RepBN statistics (0 = off)", check=non_negative_int
        ),
    )
    nonfinite_patience: int = field(
        default=20, metadata=_h("stop after this many non-finite updates in a row", check=non_negative_int)
    )
    # evaluation and bookkeeping
    eval_every: int = field(
        default=250, metadata=_h("validate every N optimizer steps (and at the end)", check=positive_int)
    )
    eval_tokens: int = field(
        default=65536, metadata=_h("validation tokens per periodic evaluation", check=positive_int)
    )
    final_eval_tokens: int | None = field(
        default=None, metadata=_h("tokens of the final evaluation (None=all)", check=positive_int)
    )
    checkpoint_every: int = field(
        default=500, metadata=_h("checkpoint every N optimizer steps (and at the end)", check=positive_int)
    )
    log_every: int = field(
        default=10, metadata=_h("write a train record every N optimizer steps", check=positive_int)
    )
    progress: bool = field(default=True, metadata=_h("progress bar (only when stderr is a terminal)"))
    amp: str = field(default="auto", metadata=_h("auto (bf16 on GPU, off on CPU) | bf16 | none"))
    compile: bool = field(default=False, metadata=_h("torch.compile the training model"))
    device: str = field(default="auto", metadata=_h("auto | cpu | cuda"))
    threads: int | None = field(
        default=None, metadata=_h("torch CPU threads (None = torch's default)", check=positive_int)
    )


SIZES = ("tiny", "125m", "350m")
ATTENTIONS = ("sla", "gla", "softmax")
NORMS = ("rmsnorm", "prepbn")
#: metadata keys that identify a run's model (summary.json, resume checks)
MODEL_IDENTITY = ("size", "attention", "attention_pattern", "norm", "vocab_size", "tokenizer")
#: model keys with a config key of their own, so model_kwargs must not repeat them
_OWN_MODEL_KEYS = ("attention", "attention_pattern", "norm", "vocab_size")


def resolve_lm_config(cfg: LMTrainConfig) -> LMTrainConfig:
    """Check choices and fill size-dependent defaults (returns the same object)."""
    cfg.model = cfg.model.lower()
    if cfg.model not in SIZES:
        raise InputError(f"--model must be one of {', '.join(SIZES)}, got {cfg.model!r}")
    if cfg.attention not in ATTENTIONS:
        raise InputError(f"--attention must be one of {', '.join(ATTENTIONS)}, got {cfg.attention!r}")
    if cfg.norm not in NORMS:
        raise InputError(f"--norm must be one of {', '.join(NORMS)}, got {cfg.norm!r}")
    if cfg.amp not in ("auto", "bf16", "none"):
        raise InputError(f"--amp must be auto | bf16 | none, got {cfg.amp!r}")
    repeated = sorted(set(cfg.model_kwargs) & set(_OWN_MODEL_KEYS))
    if repeated:
        raise InputError(f"model_kwargs must not set {', '.join(repeated)}: each has a key of its own")
    # the model's own checks (e.g. a pattern that does not divide the depth) before any data is read
    model_config = _model_config(cfg)
    check_config(cfg)  # every numeric key in its range (steps, batch_size, lr, betas, ...)
    if cfg.lr is None:
        cfg.lr = 1e-3 if cfg.model == "tiny" else 3e-4
    if cfg.output is None:
        cfg.output = f"runs/lm-{cfg.model}-{model_config.attention_label}-{cfg.norm}"
    return cfg


def _model_config(cfg: LMTrainConfig):
    """The validated SlabLMConfig the run builds (vocab_size aside: it comes from the tokenizer)."""
    from slab_edge.models.slab_lm import slab_lm_config

    return slab_lm_config(
        cfg.model,
        attention=cfg.attention,
        attention_pattern=cfg.attention_pattern,
        norm=cfg.norm,
        **cfg.model_kwargs,
    )


def steps_of(value: float, total: int) -> int:
    """A schedule length given as steps (>= 1) or as a fraction of the run (< 1)."""
    if value < 0:
        raise InputError(f"schedule lengths must be >= 0, got {value}")
    return int(round(value * total)) if value < 1 else int(value)


# ---------------------------------------------------------------------------------------------------------
# model


def build_lm(
    size: str,
    attention: str,
    norm: str,
    vocab_size: int,
    deploy: bool = False,
    attention_pattern: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A SLAB-LM from the model zoo (slab_edge.models.slab_lm); no pattern: `attention` in every layer."""
    from slab_edge.models import slab_lm

    try:
        return slab_lm.create_slab_lm(
            size,
            deploy=deploy,
            attention=attention,
            attention_pattern=attention_pattern,
            norm=norm,
            vocab_size=vocab_size,
            **kwargs,
        )
    except TypeError as err:  # slab_lm_config turns unknown fields into InputError; this is a safety net
        raise InputError(f"SLAB-LM rejects builder arguments {sorted(kwargs)}: {err}") from None


def lm_meta(
    cfg: LMTrainConfig, tokenizer: Tokenizer, deploy: bool = False, metrics: dict | None = None
) -> dict[str, Any]:
    """Identity block stored with every checkpoint and model file: enough to rebuild the model."""
    from slab_edge import __version__

    return {
        "format": LM_FORMAT,
        "model": "slab_lm",
        "size": cfg.model,
        "attention": cfg.attention,
        "attention_pattern": cfg.attention_pattern,
        "norm": cfg.norm,
        "model_kwargs": dict(cfg.model_kwargs),
        "vocab_size": tokenizer.vocab_size,
        "tokenizer": tokenizer.spec,
        "seq_len": cfg.seq_len,
        "deploy": bool(deploy),
        "folded": bool(deploy),
        "metrics": dict(metrics or {}),
        "slab_edge_version": __version__,
    }


def model_from_meta(meta: dict[str, Any], deploy: bool | None = None) -> nn.Module:
    if meta.get("format") != LM_FORMAT:
        raise CheckpointError(
            f"not a SLAB-LM file (metadata format {meta.get('format')!r}, expected {LM_FORMAT})"
        )
    return build_lm(
        meta["size"],
        meta["attention"],
        meta["norm"],
        int(meta["vocab_size"]),
        deploy=bool(meta.get("deploy")) if deploy is None else deploy,
        attention_pattern=meta.get("attention_pattern"),  # absent before hybrids: every layer `attention`
        **meta.get("model_kwargs", {}),
    )


def load_lm(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any], Path]:
    """Rebuild a SLAB-LM from a model file, a checkpoint manifest or a run folder; load weights strictly.

    Returns:
        (model in eval mode, metadata, folder that holds its tokenizer file).
    """
    path = Path(path)
    if path.is_dir() and (path / MODEL_FILE).is_file():
        path = path / MODEL_FILE
    if path.is_dir() or path.suffix == ".json":
        manifest = resolve_checkpoint(path)
        ckpt = load_checkpoint(manifest)
        state, meta = ckpt.model_state, ckpt.meta
        folder = manifest.parent.parent if manifest.parent.name == CHECKPOINT_DIR else manifest.parent
    else:
        if not path.exists():
            raise CheckpointError(f"model {path} does not exist")
        state, meta = read_safetensors(path)
        folder = path.parent
    model = model_from_meta(meta)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not fit its SLAB-LM ({meta.get('size')}): {first}") from None
    return model.to(device).eval(), meta, folder


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a SLAB-LM forward (which may return (logits, state))."""
    return output[0] if isinstance(output, tuple) else output


# ---------------------------------------------------------------------------------------------------------
# data


def sample_batch(
    tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int, step: int, micro: int = 0, rank: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each [B, seq_len] int64, at random offsets fixed by (seed, step, micro, rank)."""
    n_windows = tokens.numel() - seq_len
    if n_windows < 1:
        raise InputError(f"training split has {tokens.numel()} tokens; need more than seq_len={seq_len}")
    gen = torch.Generator().manual_seed(_mix(seed, step, micro, rank))
    starts = torch.randint(0, n_windows, (batch_size,), generator=gen)
    idx = starts[:, None] + torch.arange(seq_len + 1)[None]  # [B, T+1]
    windows = tokens[idx].long()
    return windows[:, :-1], windows[:, 1:]


def _mix(*values: int) -> int:
    """A 63-bit seed from several integers (splitmix-style), stable across runs and machines."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def eval_windows(n_tokens: int, seq_len: int, limit: int | None) -> list[int]:
    """Start offsets of consecutive, non-overlapping validation windows (seq_len targets each)."""
    usable = n_tokens - 1 if limit is None else min(n_tokens - 1, int(limit))
    return list(range(0, usable - seq_len + 1, seq_len))


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    tokens: torch.Tensor,
    byte_lengths: torch.Tensor,
    seq_len: int,
    batch_size: int,
    limit: int | None = None,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    dist: DistInfo | None = None,
) -> dict[str, float]:
    """Mean next-token loss (nats) and bits per byte over validation windows (sharded over ranks, exact sums).

    Args:
        tokens: [N] validation token stream.
        byte_lengths: [V] bytes each token id stands for (bpb = loss * tokens / bytes / ln 2).
        limit: evaluate the first `limit` tokens only (None: all).
    """
    device = torch.device(device)
    dist = dist or DistInfo(device=device)
    starts = eval_windows(tokens.numel(), seq_len, limit)
    if not starts:
        raise InputError(f"validation split has {tokens.numel()} tokens; need more than seq_len={seq_len}")
    mine = starts[dist.rank :: dist.world_size]
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_tokens = torch.zeros((), dtype=torch.float64, device=device)
    n_bytes = torch.zeros((), dtype=torch.float64, device=device)
    offsets = torch.arange(seq_len + 1)
    for i in range(0, len(mine), batch_size):
        idx = torch.tensor(mine[i : i + batch_size])[:, None] + offsets[None]
        windows = tokens[idx].long().to(device)
        inputs, targets = windows[:, :-1], windows[:, 1:]
        with autocast_context(device, amp_dtype):
            logits = logits_of(model(inputs))
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
        )
        loss_sum += loss.double()
        n_tokens += targets.numel()
        n_bytes += byte_lengths.to(device)[targets].sum().double()
    model.train(was_training)
    totals = [all_reduce_mean(x, dist) * dist.world_size for x in (loss_sum, n_tokens, n_bytes)]
    loss_sum_all, tokens_all, bytes_all = totals
    mean = loss_sum_all / tokens_all
    return {
        "loss": mean,
        "ppl": math.exp(min(mean, 50.0)),
        "bpb": bits_per_byte(mean, int(tokens_all), int(bytes_all)),
        "tokens": int(tokens_all),
        "bytes": int(bytes_all),
    }


def prepare_tokenizer(cfg: LMTrainConfig, run_dir: Path, dist: DistInfo) -> Tokenizer:
    """byte | bpe (trained locally on the training split) | a tokenizer.json; nothing is written here.

    A BPE tokenizer is trained once (rank 0) and sent to the other ranks; a resumed run reuses its saved
    tokenizer.json. `train_lm` saves a BPE tokenizer beside the model once the corpus has been checked.
    """
    spec = cfg.tokenizer
    if spec == "byte":
        return ByteTokenizer()
    saved = run_dir / DEFAULT_BPE_FILE
    if cfg.resume and saved.is_file():
        return BPETokenizer.from_file(saved)
    if spec != "bpe":
        path = Path(spec)
        if not path.is_file():
            raise InputError(f"--tokenizer: {spec} is neither byte, bpe nor a tokenizer.json file")
        return BPETokenizer.from_json(path.read_text(encoding="utf-8"), DEFAULT_BPE_FILE)
    text = None
    if dist.is_main:
        corpus = load_corpus(ByteTokenizer(), cfg.corpus, cfg.val_fraction, cfg.max_corpus_bytes)
        raw = bytes(corpus.train.astype(np.uint8)).decode("utf-8", errors="replace")
        pieces = (raw[i : i + (1 << 16)] for i in range(0, len(raw), 1 << 16))
        text = train_bpe(pieces, cfg.bpe_vocab).to_json()
    return BPETokenizer.from_json(broadcast_object(text, dist), DEFAULT_BPE_FILE)


# ---------------------------------------------------------------------------------------------------------
# the loop


def _amp_dtype(cfg: LMTrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "none" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def _optimizer(model: nn.Module, cfg: LMTrainConfig):
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(
        model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.opt_betas), eps=1e-8
    )


def _scheduler(optimizer, cfg: LMTrainConfig):
    from timm.scheduler import CosineLRScheduler

    warmup = steps_of(cfg.warmup, cfg.steps)
    return CosineLRScheduler(
        optimizer,
        t_initial=max(cfg.steps - warmup, 1),
        lr_min=cfg.lr * cfg.min_lr_ratio,
        warmup_t=warmup,
        warmup_lr_init=cfg.lr * 0.01,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def _check_run_folder(run_dir: Path, cfg: LMTrainConfig) -> None:
    has_run = (run_dir / CHECKPOINT_DIR / "last.json").is_file() or (run_dir / MODEL_FILE).is_file()
    if cfg.resume and not (run_dir / CHECKPOINT_DIR / "last.json").is_file():
        raise InputError(f"--resume: {run_dir} holds no checkpoint to resume from")
    if has_run and not cfg.resume and not cfg.overwrite:
        raise InputError(
            f"{run_dir} already holds a run: pass --resume to continue it or --overwrite to replace it"
        )


def train_lm(cfg: LMTrainConfig) -> dict[str, Any]:
    """Train (or resume) one SLAB-LM run; returns the summary written to summary.json (on rank 0)."""
    from slab_edge.io import check_output
    from slab_edge.layers.norms import advance_progressive_norms, current_mix_weight, set_progressive_schedule

    cfg = resolve_lm_config(cfg)
    dist = init_distributed(cfg.device)
    try:
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        run_dir = Path(cfg.output)
        is_main = dist.is_main
        if is_main:
            _check_run_folder(run_dir, cfg)

        # data first, so a bad corpus stops the run before anything is written
        # (every rank tokenizes the same corpus: deterministic, and cheaper than broadcasting it)
        tokenizer = prepare_tokenizer(cfg, run_dir, dist)
        corpus = load_corpus(tokenizer, cfg.corpus, cfg.val_fraction, cfg.max_corpus_bytes)
        _check_corpus_sizes(corpus, cfg)
        if is_main:
            check_output(run_dir, folder=True, label="run folder")  # created by the first file written
        train_tokens = torch.from_numpy(corpus.train)
        val_tokens = torch.from_numpy(corpus.val)
        byte_lengths = torch.from_numpy(token_byte_lengths(tokenizer))

        # model, optimizer, schedules
        seed_everything(cfg.seed)
        model = build_lm(
            cfg.model,
            cfg.attention,
            cfg.norm,
            tokenizer.vocab_size,
            attention_pattern=cfg.attention_pattern,
            **cfg.model_kwargs,
        )
        set_progressive_schedule(
            model,
            warmup_steps=steps_of(cfg.prepbn_warmup, cfg.steps),
            decay_steps=steps_of(cfg.prepbn_decay, cfg.steps),
            step=0,
        )
        model.to(dist.device)
        optimizer = _optimizer(model, cfg)
        scheduler = _scheduler(optimizer, cfg)
        guard = NonFiniteGuard(cfg.nonfinite_patience)
        meta = lm_meta(cfg, tokenizer)
        step, best_bpb, trained_seconds, tokens_seen = 0, float("inf"), 0.0, 0
        batches_drawn = 0  # = step + skipped updates: a skipped update does not redraw the same batch

        ckpt_dir = run_dir / CHECKPOINT_DIR
        if cfg.resume:
            ckpt = load_checkpoint(resolve_checkpoint(run_dir))
            _check_resume_identity(ckpt.meta, meta, ckpt.path)
            model.load_state_dict(ckpt.model_state, strict=True)
            optimizer.load_state_dict(ckpt.optimizer_state)
            guard.load_state_dict(ckpt.state.get("guard", {}))
            step = int(ckpt.manifest["step"])
            best_bpb = float(ckpt.state.get("best_bpb", float("inf")))
            trained_seconds = float(ckpt.state.get("trained_seconds", 0.0))
            tokens_seen = int(ckpt.state.get("tokens_seen", 0))
            batches_drawn = int(ckpt.state.get("batches_drawn", step))
            if dist.rank < len(ckpt.rng_states):
                restore_rng_state(*ckpt.rng_states[dist.rank])
        if is_main:  # every check has passed: the run folder appears now
            if isinstance(tokenizer, BPETokenizer):
                tokenizer.save(run_dir)
            save_config(cfg, run_dir, header="slab-edge train-lm: resolved config (reuse with --config)")
        barrier(dist)

        train_model = wrap_ddp(model, dist)
        if cfg.compile:
            train_model = torch.compile(train_model)
        amp_dtype = _amp_dtype(cfg, dist.device)
        log = MetricsLog(run_dir / "metrics.jsonl", resume_step=step if cfg.resume else None, enabled=is_main)
        if not cfg.resume:
            log.write("event", step=0, event="start", corpus=corpus.summary(), params=_count_params(model))

        def save(tag_list: tuple[str, ...]) -> None:
            rng = gather_objects(capture_rng_state(), dist)
            if not is_main:
                return
            state = {
                "best_bpb": best_bpb,
                "trained_seconds": trained_seconds,
                "tokens_seen": tokens_seen,
                "batches_drawn": batches_drawn,
                "guard": guard.state_dict(),
            }
            for tag in tag_list:
                save_checkpoint(
                    ckpt_dir,
                    tag,
                    step=step,
                    model_state=model.state_dict(),
                    meta=meta,
                    state=state,
                    config=config_to_dict(cfg),
                    optimizer=optimizer,
                    scheduler=scheduler,
                    rng_states=rng,
                    keep_tags=tag_list,
                )

        def validate(limit: int | None) -> dict[str, float]:
            return evaluate_lm(
                model,
                val_tokens,
                byte_lengths,
                cfg.seq_len,
                cfg.batch_size,
                limit,
                dist.device,
                amp_dtype,
                dist,
            )

        tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * dist.world_size
        stop_reason = "steps"
        train_model.train()
        window_start, window_tokens = time.perf_counter(), 0
        label = model.config.attention_label
        desc = f"train-lm {cfg.model}/{label}"
        with Progress(cfg.steps, desc=desc, enabled=is_main and cfg.progress, initial=step) as bar:
            while step < cfg.steps:
                if cfg.max_seconds is not None and trained_seconds >= cfg.max_seconds:
                    stop_reason = "max_seconds"
                    break
                if cfg.stop_at_step is not None and step >= cfg.stop_at_step:
                    stop_reason = "stop_at_step"
                    break
                t0 = time.perf_counter()
                scheduler.step_update(step)
                lr = optimizer.param_groups[0]["lr"]
                loss_total = torch.zeros((), device=dist.device)
                for micro in range(cfg.grad_accum):
                    inputs, targets = sample_batch(
                        train_tokens, cfg.batch_size, cfg.seq_len, cfg.seed, batches_drawn, micro, dist.rank
                    )
                    inputs, targets = inputs.to(dist.device), targets.to(dist.device)
                    last = micro == cfg.grad_accum - 1
                    sync = contextlib.nullcontext() if last or not dist.enabled else train_model.no_sync()
                    with sync, autocast_context(dist.device, amp_dtype):
                        logits = logits_of(train_model(inputs))
                        loss = F.cross_entropy(
                            logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1)
                        )
                        (loss / cfg.grad_accum).backward()
                    loss_total += loss.detach() / cfg.grad_accum
                batches_drawn += 1
                if cfg.clip_grad:
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad))
                else:
                    grad_norm = float(_grad_norm(model))
                loss_value = all_reduce_mean(loss_total, dist)
                grad_norm = all_reduce_mean(grad_norm, dist)
                verdict = guard.check(
                    loss_value, grad_norm, step=step, mix_weight=current_mix_weight(model), lr=lr
                )
                if verdict.skip:
                    optimizer.zero_grad(set_to_none=True)
                    log.write("event", step=step, event="skipped", reason=verdict.reason)
                    trained_seconds += time.perf_counter() - t0
                    continue
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                advance_progressive_norms(model)
                step += 1
                tokens_seen += tokens_per_step
                window_tokens += tokens_per_step
                trained_seconds += time.perf_counter() - t0
                bar.update(1, loss=loss_value, lr=lr)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    now = time.perf_counter()
                    log.write(
                        "train",
                        step=step,
                        loss=loss_value,
                        lr=lr,
                        lr_rel=lr / cfg.lr,
                        grad_norm=grad_norm,
                        mix_weight=current_mix_weight(model),
                        tokens=tokens_seen,
                        tokens_per_s=window_tokens / max(now - window_start, 1e-9),
                    )
                    window_start, window_tokens = now, 0
                if step % cfg.eval_every == 0 and step < cfg.steps:
                    result = validate(cfg.eval_tokens)
                    log.write("eval", step=step, **result)
                    if result["bpb"] < best_bpb:
                        best_bpb = result["bpb"]
                        save(("last", "best"))
                    train_model.train()
                    window_start = time.perf_counter()
                if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    save(("last",))

        recal_batches = 0
        if cfg.recal_steps and stop_reason != "stop_at_step" and batchnorm_layers(model):
            # SLAB's last phase: frozen weights, RepBN running statistics re-estimated (cumulative average)
            before = validate(cfg.eval_tokens)
            recal_batches = recalibrate_bn(
                model, _recal_batches(train_tokens, cfg, dist), momentum=None, device=dist.device
            )
            sync_bn_stats(model, dist)
            after = validate(cfg.eval_tokens)
            log.write(
                "event", step=step, event="recalibrated", batches=recal_batches,
                bpb_before=before["bpb"], bpb_after=after["bpb"],
            )  # fmt: skip
        final = validate(cfg.final_eval_tokens)
        log.write("eval", step=step, final=True, **final)
        best_bpb = min(best_bpb, final["bpb"])
        save(("last",))
        summary = {
            "steps": step,
            "stopped_by": stop_reason,
            "tokens_seen": tokens_seen,
            "trained_seconds": round(trained_seconds, 3),
            "tokens_per_second": tokens_seen / trained_seconds if trained_seconds else None,
            "val_loss": final["loss"],
            "val_bpb": final["bpb"],
            "val_ppl": final["ppl"],
            "val_tokens": final["tokens"],
            "skipped_updates": guard.total_skipped,
            "recalibration_batches": recal_batches,
            "params": _count_params(model),
            "corpus": corpus.summary(),
            "model": {k: meta[k] for k in MODEL_IDENTITY},
        }
        if is_main:
            final_meta = {
                **meta,
                "metrics": {"val_loss": final["loss"], "val_bpb": final["bpb"], "steps": step},
            }
            write_safetensors(run_dir / MODEL_FILE, model.state_dict(), final_meta)
            atomic_write_json(run_dir / SUMMARY_FILE, summary)
            title = f"SLAB-LM {cfg.model} {label}/{cfg.norm} on {corpus.source}"
            plot_metrics(read_metrics(log.path), run_dir / "metrics.png", panels=LM_PLOT_PANELS, title=title)
        return broadcast_object(summary, dist)
    finally:
        cleanup_distributed(dist)


def _recal_batches(tokens: torch.Tensor, cfg: LMTrainConfig, dist: DistInfo):
    """Training windows for BN recalibration, from a stream of their own (seed + 1), per rank."""
    for i in range(cfg.recal_steps):
        inputs, _ = sample_batch(tokens, cfg.batch_size, cfg.seq_len, cfg.seed + 1, i, 0, dist.rank)
        yield inputs


def _check_corpus_sizes(corpus: TextCorpus, cfg: LMTrainConfig) -> None:
    if corpus.train.size <= cfg.seq_len + 1:
        raise InputError(
            f"corpus {corpus.source}: the training split has {corpus.train.size} tokens, "
            f"fewer than one window of seq_len={cfg.seq_len} (use a larger corpus or a smaller --seq-len)"
        )
    if corpus.val.size <= cfg.seq_len + 1:
        raise InputError(
            f"corpus {corpus.source}: the validation split has {corpus.val.size} tokens, "
            f"fewer than one window of seq_len={cfg.seq_len} (raise --val-fraction or lower --seq-len)"
        )


def _check_resume_identity(saved: dict[str, Any], current: dict[str, Any], source: Path) -> None:
    keys = (*MODEL_IDENTITY, "model_kwargs")
    diff = {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}
    if diff:
        pretty = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"cannot resume {source}: the run was made with a different model ({pretty})")


def _grad_norm(model: nn.Module) -> torch.Tensor:
    grads = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.zeros(())


def _count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in unwrap_model(model).parameters()))
