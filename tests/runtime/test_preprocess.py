"""Preprocessing without torch: the timm-style transform, every image mode, huge images, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from runtime_helpers import write_image

from slab_edge.errors import InputError
from slab_edge.runtime import EvalTransform, load, load_image, preprocess_image, to_rgb, transform_for
from slab_edge.runtime.preprocess import LARGE_IMAGE_FACTOR


def naive_eval_transform(image: Image.Image, size: int, crop_pct: float, mean, std) -> np.ndarray:
    """Straight-line reference for a square target: resize shorter side, center crop, normalize."""
    w, h = image.size
    short = int(size / crop_pct)
    new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    pixels = np.asarray(image.resize(new, Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    top, left = int(round((new[1] - size) / 2)), int(round((new[0] - size) / 2))
    pixels = pixels[top : top + size, left : left + size]
    return ((pixels - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)


@pytest.mark.parametrize("wh", [(64, 48), (48, 64), (40, 40), (20, 12)])
@pytest.mark.parametrize("crop_pct", [0.875, 1.0])
def test_transform_matches_straight_line_reference(wh, crop_pct):
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    transform = EvalTransform((3, 32, 32), mean, std, "bicubic", crop_pct)
    out = transform(rgb)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32 and out.flags.c_contiguous
    if min(wh) >= int(32 / crop_pct):  # the reference does not pad
        np.testing.assert_allclose(out, naive_eval_transform(rgb, 32, crop_pct, mean, std), atol=1e-6)


def test_crop_larger_than_resized_image_pads_with_zeros_like_torchvision():
    white = Image.new("RGB", (30, 20), (255, 255, 255))
    # crop_pct > 1: the shorter side is resized to floor(16 / 1.5) = 10 (-> 15x10), then padded to 16x16
    out = EvalTransform((3, 16, 16), (0.0,) * 3, (1.0,) * 3, "nearest", 1.5)(white)
    expected = np.zeros((3, 16, 16), np.float32)
    expected[:, 3:13, 0:15] = 1.0  # torchvision pads (16-10)//2 = 3 rows on top, (16-15)//2 = 0 columns left
    np.testing.assert_array_equal(out, expected)
    # non-square target: the smaller ratio wins, so the image covers the crop (no padding)
    small = Image.new("RGB", (8, 8), "white")
    covered = EvalTransform((3, 16, 24), (0.0,) * 3, (1.0,) * 3, "nearest", 1.0)(small)
    assert np.all(covered == 1.0)


def test_from_metadata_and_defaults(tiny_onnx, bare_onnx):
    with load(tiny_onnx) as session:
        transform = transform_for(session)
    assert transform.input_size == (3, 32, 32)
    assert transform.interpolation == "bilinear" and transform.crop_pct == 1.0
    assert transform.mean == (0.5,) * 3
    with load(bare_onnx) as session:
        transform = transform_for(session)  # no metadata: shape from the model, timm defaults
    assert transform.input_size == (3, 24, 24) and transform.crop_pct == 0.875
    assert transform.interpolation == "bicubic"
    assert EvalTransform.from_metadata({}, crop_pct=0.9).crop_pct == 0.9
    with pytest.raises(InputError, match="interpolation"):
        EvalTransform.from_metadata({"interpolation": "cubic-ish"})
    with pytest.raises(InputError, match="C = 1 or 3"):
        EvalTransform((4, 8, 8))


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [
        ("L", ".png"),
        ("RGBA", ".png"),
        ("LA", ".png"),
        ("P", ".png"),
        ("1", ".png"),
        ("CMYK", ".jpg"),
        ("I;16", ".png"),
        ("I", ".tif"),
        ("F", ".tif"),
        ("L", ".jpg"),
        ("RGB", ".webp"),
    ],
)
def test_every_mode_becomes_rgb(tmp_path, mode, suffix):
    path = write_image(tmp_path / f"img{suffix}", mode)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (40, 30)
    out = preprocess_image(path, {"input_size": [3, 16, 16]})
    assert out.shape == (1, 3, 16, 16) and np.isfinite(out).all()


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.full((10, 10), 32896, dtype=np.uint16)  # mid-grey in 16 bits = 128 in 8 bits
    values[0, 0] = 65535
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    rgb = np.asarray(load_image(path))
    assert rgb[5, 5].tolist() == [128, 128, 128]  # PIL's convert("RGB") would clip this to 255
    assert rgb[0, 0].tolist() == [255, 255, 255]


def test_transparent_palette_image(tmp_path):
    image = Image.new("P", (10, 10))
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    image.info["transparency"] = 0
    path = tmp_path / "pal.png"
    image.save(path, transparency=0)
    assert load_image(path).getpixel((0, 0)) == (0, 0, 0)
    assert to_rgb(Image.new("LA", (2, 2))).mode == "RGB"


def test_grayscale_model(tmp_path):
    path = write_image(tmp_path / "rgb.png", "RGB")
    out = EvalTransform((1, 8, 8), (0.5,), (0.5,), "bilinear", 1.0)(path)
    assert out.shape == (1, 8, 8)


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    side = 32 * LARGE_IMAGE_FACTOR * 4  # 16x the target: draft picks a 1/8 DCT scale
    gradient = np.linspace(0, 255, side, dtype=np.float32)
    rgb = np.stack([np.add.outer(gradient, gradient) / 2] * 3, -1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    reduced = load_image(path, target_short_side=32)
    assert 64 <= min(reduced.size) < side  # decoded small, but still >= 2x the target
    full = load_image(path)
    assert full.size == (side, side)
    transform = EvalTransform((3, 32, 32), crop_pct=1.0)
    np.testing.assert_allclose(transform(path), transform(full), atol=0.1)  # close, not bit-equal


def test_large_png_is_reduced(tmp_path):
    path = write_image(tmp_path / "big.png", "RGB", size=(600, 520))
    assert min(load_image(path, target_short_side=32).size) < 520
    assert load_image(path).size == (600, 520)


def test_decompression_bomb_guard(tmp_path):
    path = write_image(tmp_path / "wide.png", "L", size=(3000, 2000))
    with pytest.raises(InputError, match=r"wide\.png: 3000x2000 = 6 MP exceeds the 1 MP limit"):
        load_image(path, max_pixels=1_000_000)
    with pytest.raises(InputError, match="decompression-bomb"):
        EvalTransform((3, 16, 16), max_pixels=1000)(path)
    assert load_image(path, max_pixels=10_000_000).size == (3000, 2000)
    # PIL's global limit is left as it was
    assert Image.MAX_IMAGE_PIXELS == 89_478_485


def test_pil_global_limit_does_not_block_a_raised_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = write_image(tmp_path / "ok.png", "RGB", size=(40, 30))
    assert load_image(path, max_pixels=2000).size == (40, 30)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_bad_files_name_the_file(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(InputError, match=r"notes\.jpg: not an image"):
        load_image(text)
    good = write_image(tmp_path / "cut.jpg", "RGB", size=(200, 200), quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:600])
    with pytest.raises(InputError, match=r"truncated\.jpg: corrupt or truncated"):
        load_image(truncated)
    with pytest.raises(InputError, match="image not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="is a folder"):
        load_image(tmp_path)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.png"):
        load_image(empty)
