"""Data: the embedded digits split, ImageFolder validation, corrupt-image skipping, resumable sampling."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from slab_edge.errors import InputError
from slab_edge.train.data import (
    ResumableSampler,
    ShardSampler,
    SkippingImageDataset,
    load_digits_split,
    scan_image_folder,
)


def test_digits_split_is_fixed_stratified_and_upscaled():
    (xt, yt), (xv, yv) = load_digits_split()
    assert xt.shape == (1438, 32, 32) and xv.shape == (359, 32, 32) and xt.dtype == np.uint8
    assert xt.max() > 200  # 0..16 mapped to 0..255
    counts = np.bincount(yv, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 20% of each class
    (xt2, _), (xv2, yv2) = load_digits_split()
    assert np.array_equal(xv, xv2) and np.array_equal(yv, yv2)
    train_rows = {x.tobytes() for x in xt}
    assert not any(x.tobytes() in train_rows for x in xv[:50])  # held-out images are not training images


def _png(path, value=128, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def _folder(root, classes=("a", "b"), per_class=2):
    for split in ("train", "val"):
        for c in classes:
            for i in range(per_class):
                _png(root / split / c / f"{i}.png", value=40 * i + 10)
    return root


def test_scan_accepts_a_good_tree(tmp_path):
    train_dir, val_dir, classes = scan_image_folder(_folder(tmp_path / "d"))
    assert classes == ["a", "b"] and train_dir.name == "train" and val_dir.name == "val"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "no train/ subfolder .*it is empty"),
        ("no_val", "no val/"),
        ("no_classes", "holds no class folders"),
        ("empty_class", "class folder .*b has no images"),
        ("mismatch", "disagree on classes"),
    ],
)
def test_scan_refuses_bad_trees(tmp_path, damage, message):
    root = tmp_path / "d"
    if damage == "missing":
        pass
    elif damage == "empty":
        root.mkdir()
    else:
        _folder(root)
        if damage == "no_val":
            for p in sorted((root / "val").rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
            (root / "val").rmdir()
        elif damage == "no_classes":
            for p in sorted((root / "train").rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
        elif damage == "empty_class":
            for p in (root / "train" / "b").iterdir():
                p.unlink()
            (root / "train" / "b" / "notes.txt").write_text("not an image")
        elif damage == "mismatch":
            _png(root / "val" / "c" / "0.png")
    with pytest.raises(InputError, match=message):
        scan_image_folder(root)


def test_corrupt_images_are_skipped_with_a_warning_and_counted(tmp_path, caplog):
    root = _folder(tmp_path / "d", per_class=3)
    bad = root / "train" / "a" / "1.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    (root / "train" / "b" / "9.png").write_bytes(b"not an image at all")
    _, _, classes = scan_image_folder(root)
    ds = SkippingImageDataset(root / "train", classes)
    assert len(ds) == 7
    with caplog.at_level(logging.WARNING, logger="slab_edge.train.data"):
        items = [ds[i] for i in range(len(ds))]
    assert int(ds.skipped) == 2
    assert any("1.png" in r.message for r in caplog.records) and any(
        "9.png" in r.message for r in caplog.records
    )
    assert all(img.size == (8, 8) for img, _ in items)  # every slot got a readable image


def test_all_corrupt_stops_with_one_line(tmp_path):
    root = tmp_path / "d"
    for i in range(12):
        p = root / "train" / "a" / f"{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"junk")
    ds = SkippingImageDataset(root / "train", ["a"])
    with pytest.raises(InputError, match="unreadable images in a row"):
        ds[0]


def test_resumable_sampler_continues_and_shards_cover_the_global_batch():
    data = list(range(40))
    one = ResumableSampler(data, num_replicas=1, rank=0, seed=3)
    one.set_position(epoch=2)
    full = list(one)
    one.set_position(epoch=2, start_index=12)
    assert list(one) == full[12:]
    one.set_position(epoch=3)
    assert list(one) != full  # order depends on the epoch
    shards = []
    for rank in range(2):
        s = ResumableSampler(data, num_replicas=2, rank=rank, seed=3)
        s.set_position(epoch=2)
        shards.append(list(s))
    # global batch k of the 1-process run == union of per-rank batch k (global batch 8, per-rank 4)
    for k in range(5):
        assert sorted(shards[0][4 * k : 4 * k + 4] + shards[1][4 * k : 4 * k + 4]) == sorted(
            full[8 * k : 8 * k + 8]
        )
    evals = [list(ShardSampler(range(11), 3, r)) for r in range(3)]
    assert sorted(sum(evals, [])) == list(range(11))
