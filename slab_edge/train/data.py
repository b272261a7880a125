"""Data for vision training: embedded digits, synthetic batches, ImageFolder trees; resumable samplers.

- `digits`: scikit-learn's 1,797 real 8x8 handwritten digits (shipped with scikit-learn, no download),
  upscaled bicubically to 32x32, grey copied to 3 channels; a fixed stratified 80/20 train/held-out split.
- `synthetic`: random images and labels generated once on the training device (throughput runs; no
  host-side data cost).
- a folder: `<root>/train/<class>/*.jpg` and `<root>/val/<class>/*.jpg` (or `validation/`), read with
  timm's ImageDataset. Empty folders, missing splits, a class folder without images and train/val class
  mismatches are refused with one line. Corrupt or truncated images are SKIPPED with a warning naming the
  file and a running count (the next sample takes the slot, as timm does); more than
  `MAX_CONSECUTIVE_BAD` unreadable files in a row stop the run.

Data order is a pure function of (seed, epoch): `ResumableSampler` is a DistributedSampler that can start
mid-epoch, so a resumed run continues with exactly the batches the interrupted one would have seen.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from slab_edge.errors import InputError

__all__ = [
    "DIGITS_LABELS",
    "DataBundle",
    "DigitsDataset",
    "ResumableSampler",
    "ShardSampler",
    "SkippingImageDataset",
    "SyntheticBatches",
    "build_data",
    "data_classes",
    "load_digits_split",
    "loaders_for_model",
    "scan_image_folder",
]

_log = logging.getLogger("slab_edge.train.data")

DIGITS_LABELS = [str(i) for i in range(10)]
DIGITS_SIZE = 32
MAX_CONSECUTIVE_BAD = 10


@dataclass
class DataBundle:
    """What the trainer needs to know about a data set."""

    kind: str  # digits | synthetic | folder
    train: Any  # Dataset, or SyntheticBatches
    val: Any
    num_classes: int
    labels: list[str]
    input_size: tuple[int, int, int]
    data_config: dict[str, Any] = field(default_factory=dict)  # mean/std/interpolation/crop_pct
    train_eval: Any = None  # training images with eval transforms (BN recalibration)


# ---------------------------------------------------------------------------------------------------------
# digits


def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8-range float [1797, 8, 8] with values 0..16, labels [1797]) from scikit-learn's data file.

    Read straight from `sklearn/datasets/data/digits.csv.gz` (importing scikit-learn costs seconds);
    falls back to `sklearn.datasets.load_digits` if the file moved.
    """
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("--data digits needs scikit-learn (pip install scikit-learn): it ships the images")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if path.is_file():
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64)
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


@functools.lru_cache(maxsize=4)
def load_digits_split(seed: int = 0, val_fraction: float = 0.2, size: int = DIGITS_SIZE):
    """The digits set as ((train_images, train_labels), (val_images, val_labels)).

    Images are uint8 [N, size, size] (0-255, bicubic upscaling of the 8x8 originals), labels int64 [N].
    The split is stratified: in each class, a permutation fixed by `seed` sends round(n_c * val_fraction)
    images to the held-out set (360 of 1,797 for the defaults). Cached: treat the arrays as read-only.
    """
    from PIL import Image

    images, target = _digits_raw()
    raw = np.clip(images * (255.0 / 16.0), 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    big = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in raw])
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in np.unique(target):
        members = np.flatnonzero(target == c)
        val_idx.extend(rng.permutation(members)[: int(round(len(members) * val_fraction))])
    val_mask = np.zeros(len(target), dtype=bool)
    val_mask[val_idx] = True
    return (big[~val_mask], target[~val_mask]), (big[val_mask], target[val_mask])


class DigitsDataset(Dataset):
    """uint8 [N, H, W] grey images -> (transform(PIL RGB image), label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from PIL import Image

        img = Image.fromarray(self.images[index], mode="L").convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])


# ---------------------------------------------------------------------------------------------------------
# synthetic


class SyntheticBatches:
    """A fixed pool of random images/labels on the device, served as `batches_per_epoch` batches.

    Stands in for a DataLoader (len, iteration, sampler.set_epoch) so throughput runs measure the model,
    not host-side data generation.
    """

    def __init__(
        self, num_images: int, batch_size: int, input_size: tuple[int, int, int], num_classes: int, seed: int
    ) -> None:
        self.batch_size = batch_size
        self.input_size = input_size
        self.num_classes = num_classes
        self.seed = seed
        self.batches_per_epoch = max(1, num_images // batch_size)
        self.start_batch = 0
        self._pool: tuple[torch.Tensor, torch.Tensor] | None = None
        self.device = torch.device("cpu")
        self.dataset = self  # the trainer reads len(loader.dataset)

    def to(self, device: torch.device) -> SyntheticBatches:
        self.device = torch.device(device)
        self._pool = None
        return self

    def _make_pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        n = 4
        x = torch.randn((n * self.batch_size, *self.input_size), generator=g)
        y = torch.randint(0, self.num_classes, (n * self.batch_size,), generator=g)
        return x.to(self.device), y.to(self.device)

    def set_epoch(self, epoch: int) -> None:  # order does not matter for random data
        pass

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._pool is None:
            self._pool = self._make_pool()
        x, y = self._pool
        n = x.shape[0] // self.batch_size
        for i in range(self.start_batch, self.batches_per_epoch):
            j = (i % n) * self.batch_size
            yield x[j : j + self.batch_size], y[j : j + self.batch_size]


# ---------------------------------------------------------------------------------------------------------
# ImageFolder


def _image_extensions() -> set[str]:
    from timm.data import get_img_extensions

    return {e.lower() for e in get_img_extensions(as_set=True)}


def scan_image_folder(root: str | Path) -> tuple[Path, Path, list[str]]:
    """Validate `<root>/{train,val|validation}/<class>/<images>`; return (train dir, val dir, class names).

    Raises:
        InputError: root or a split missing, no class folders, a class folder without images, or the
            splits disagreeing on the class list.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"dataset folder {root} does not exist (use --data digits for the embedded set)")
    if not root.is_dir():
        raise InputError(f"dataset {root} is not a folder")
    train_dir = root / "train"
    val_dir = next((root / n for n in ("val", "validation") if (root / n).is_dir()), None)
    if not train_dir.is_dir():
        entries = sorted(p.name for p in root.iterdir())[:5]
        found = f"it holds {', '.join(entries)}" if entries else "it is empty"
        raise InputError(f"dataset folder {root} has no train/ subfolder ({found}); expected train/ and val/")
    if val_dir is None:
        raise InputError(
            f"dataset folder {root} has no val/ (or validation/) subfolder for held-out evaluation"
        )
    exts = _image_extensions()
    classes = None
    for split_dir in (train_dir, val_dir):
        names = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        if not names:
            raise InputError(
                f"{split_dir} holds no class folders (expected {split_dir}/<class>/<image files>)"
            )
        for name in names:
            has_image = any(
                os.path.splitext(f)[1].lower() in exts
                for _, _, files in os.walk(split_dir / name)
                for f in files
            )
            if not has_image:
                raise InputError(
                    f"class folder {split_dir / name} has no images ({', '.join(sorted(exts))}); "
                    "remove it or add images"
                )
        if classes is None:
            classes = names
        elif names != classes:
            only_train = sorted(set(classes) - set(names))
            only_val = sorted(set(names) - set(classes))
            raise InputError(
                f"train/ and {val_dir.name}/ disagree on classes (only in train: {only_train[:5]}, "
                f"only in {val_dir.name}: {only_val[:5]})"
            )
    return train_dir, val_dir, classes


class SkippingImageDataset(Dataset):
    """timm ImageDataset over one split with a fixed class map; unreadable images are skipped and counted.

    `skipped` is a shared-memory counter, so DataLoader worker processes add to the same number.
    """

    def __init__(self, folder: Path, classes: list[str], transform=None) -> None:
        from timm.data import ImageDataset

        class_map = {c: i for i, c in enumerate(classes)}
        self.inner = ImageDataset(str(folder), class_map=class_map, transform=None)
        self.transform = transform
        self.skipped = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.inner)

    def filename(self, index: int) -> str:
        return str(self.inner.reader.samples[index][0])

    def __getitem__(self, index: int):
        from PIL import Image

        n = len(self.inner)
        for attempt in range(MAX_CONSECUTIVE_BAD + 1):
            i = (index + attempt) % n
            path, target = self.inner.reader.samples[i]
            try:
                with Image.open(path) as im:
                    img = im.convert("RGB")  # decodes every pixel: truncated files fail here
                break
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                self.skipped.add_(1)
                if path not in self._warned:
                    self._warned.add(path)
                    _log.warning(
                        "skipping unreadable image %s (%s); %d skipped so far", path, err, int(self.skipped)
                    )
        else:
            raise InputError(
                f"{MAX_CONSECUTIVE_BAD + 1} unreadable images in a row from {self.filename(index)}; "
                "the data set looks corrupt"
            )
        if self.transform is not None:
            img = self.transform(img)
        return img, int(target)


# ---------------------------------------------------------------------------------------------------------
# samplers


class ResumableSampler(DistributedSampler):
    """DistributedSampler (order from seed + epoch) that can skip the first `start_index` samples of a shard.

    Works for one process too (num_replicas=1, rank=0): data order is then identical to a 2-process run's
    global order, which is what makes 1-process and N-process runs comparable.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        self.start_index = 0

    def set_position(self, epoch: int, start_index: int = 0) -> None:
        self.set_epoch(epoch)
        self.start_index = int(start_index)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start_index :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start_index)


class ShardSampler(Sampler):
    """Evaluation shard of rank r: indices r, r + world, ... (no padding, so counts add up exactly)."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0) -> None:
        self.n, self.world, self.rank = len(dataset), num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return max(0, math.ceil((self.n - self.rank) / self.world))


# ---------------------------------------------------------------------------------------------------------
# transforms and the bundle


def build_transforms(cfg, input_size: tuple[int, int, int], mean, std) -> tuple[Any, Any]:
    """(train, eval) transforms from timm's factory with the config's augmentation recipe."""
    from timm.data import create_transform

    train_tf = create_transform(
        input_size=input_size,
        is_training=True,
        scale=tuple(cfg.scale),
        ratio=tuple(cfg.ratio),
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter,
        auto_augment=cfg.aa,
        interpolation=cfg.interpolation,
        mean=tuple(mean),
        std=tuple(std),
        re_prob=cfg.reprob,
        re_mode=cfg.remode,
        re_count=cfg.recount,
    )
    eval_tf = create_transform(
        input_size=input_size,
        is_training=False,
        interpolation=cfg.interpolation,
        mean=tuple(mean),
        std=tuple(std),
        crop_pct=cfg.crop_pct,
    )
    return train_tf, eval_tf


def data_classes(cfg) -> tuple[list[str], tuple[Path, Path] | None]:
    """(class names, (train dir, val dir) for folders) of `cfg.data`, before any model exists."""
    if cfg.data == "synthetic":
        return [str(i) for i in range(cfg.synthetic_classes)], None
    if cfg.data == "digits":
        return list(DIGITS_LABELS), None
    train_dir, val_dir, classes = scan_image_folder(cfg.data)
    return classes, (train_dir, val_dir)


def build_data(
    cfg, model_data_config: dict[str, Any] | None = None, scanned: tuple[list[str], Any] | None = None
) -> DataBundle:
    """Datasets for `cfg.data` with transforms resolved from the config (falling back to the model's cfg).

    Args:
        cfg: TrainConfig (data, input_size, mean, std and the augmentation keys).
        model_data_config: timm's resolve_data_config(model=...) (input_size, mean, std) for defaults.
        scanned: the result of `data_classes(cfg)` if already computed (saves a second folder scan).
    """
    mdc = model_data_config or {}
    side = cfg.input_size or (mdc.get("input_size") or (3, 224, 224))[-1]
    input_size = (3, int(side), int(side))
    mean = tuple(cfg.mean) if cfg.mean else tuple(mdc.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.std) if cfg.std else tuple(mdc.get("std", (0.229, 0.224, 0.225)))
    data_config = {
        "input_size": list(input_size),
        "mean": list(mean),
        "std": list(std),
        "interpolation": cfg.interpolation,
        "crop_pct": cfg.crop_pct,
    }
    if cfg.data == "synthetic":
        train = SyntheticBatches(
            cfg.synthetic_images, cfg.batch_size, input_size, cfg.synthetic_classes, cfg.seed
        )
        labels = [str(i) for i in range(cfg.synthetic_classes)]
        return DataBundle("synthetic", train, None, cfg.synthetic_classes, labels, input_size, data_config)
    train_tf, eval_tf = build_transforms(cfg, input_size, mean, std)
    if cfg.data == "digits":
        (xt, yt), (xv, yv) = load_digits_split(seed=0)  # the split is fixed, independent of the run seed
        return DataBundle(
            "digits",
            DigitsDataset(xt, yt, train_tf),
            DigitsDataset(xv, yv, eval_tf),
            10,
            list(DIGITS_LABELS),
            input_size,
            data_config,
            train_eval=DigitsDataset(xt, yt, eval_tf),
        )
    classes, dirs = scanned or data_classes(cfg)
    train_dir, val_dir = dirs
    return DataBundle(
        "folder",
        SkippingImageDataset(train_dir, classes, train_tf),
        SkippingImageDataset(val_dir, classes, eval_tf),
        len(classes),
        classes,
        input_size,
        data_config,
        train_eval=SkippingImageDataset(train_dir, classes, eval_tf),
    )


def loaders_for_model(
    data: str, meta: dict[str, Any], batch_size: int = 128, num_workers: int = 0, device: str = "cpu"
) -> tuple[Any, Any, DataBundle]:
    """(train images with eval transforms, held-out) loaders preprocessed as a model file's metadata says.

    Used by `evaluate`, `recalibrate` and `fold` on a finished model. Raises InputError when the data
    set's class count differs from the model's.
    """
    from torch.utils.data import DataLoader

    from slab_edge.train.recipes import TrainConfig

    if data == "synthetic":
        raise InputError("evaluation needs real data: use --data digits or an ImageFolder path")
    size = (meta.get("input_size") or [3, 224, 224])[-1]
    cfg = TrainConfig(
        data=data,
        input_size=int(size),
        mean=tuple(meta.get("mean") or (0.485, 0.456, 0.406)),
        std=tuple(meta.get("std") or (0.229, 0.224, 0.225)),
        interpolation=meta.get("interpolation") or "bicubic",
        crop_pct=float(meta.get("crop_pct") or 0.875),
        num_workers=num_workers,
    )
    bundle = build_data(cfg)
    if meta.get("num_classes") is not None and int(meta["num_classes"]) != bundle.num_classes:
        raise InputError(
            f"the model has {meta['num_classes']} classes but data {data!r} has {bundle.num_classes}"
        )

    def make(ds):
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            pin_memory=str(device).startswith("cuda"),
        )

    return make(bundle.train_eval), make(bundle.val), bundle
