"""Image preprocessing in numpy + PIL, driven by the model's own metadata (no torch, no torchvision).

`EvalTransform` reproduces timm's evaluation transform (transforms_imagenet_eval, crop_mode="center"):
    resize so the shorter side is floor(size / crop_pct) with the model's filter (PIL, antialiased)
    -> center crop to [H, W] (zero padding if the image is smaller) -> float / 255 -> (x - mean) / std
    -> [C, H, W] float32.
It matches timm's pipeline to float rounding for ordinary images (tested against timm itself).

Inputs are made robust for devices: grayscale, palette, RGBA and 16-bit (modes I;16 / I / F) images are
converted to RGB (16-bit values are scaled to 8 bits, not clipped as PIL's convert would); huge JPEGs are
decoded at a reduced scale (PIL draft) and other huge images reduced by an integer factor first, when the
shorter side is at least LARGE_IMAGE_FACTOR times the resize target (close to, not bit-equal with, the
full-resolution path); images above `max_pixels` are refused (decompression-bomb guard); unreadable files
raise InputError naming the file.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from slab_edge.errors import InputError

#: timm's defaults, used when a model file carries no preprocessing metadata
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875
DEFAULT_INTERPOLATION = "bicubic"

#: images with more pixels are refused: PIL's own hard limit (2 x MAX_IMAGE_PIXELS, ~179 MP)
DEFAULT_MAX_PIXELS = 2 * 89_478_485

#: pre-reduce (JPEG draft / Image.reduce) only when the shorter side is this many times the resize target
LARGE_IMAGE_FACTOR = 4

FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
    "random": Image.Resampling.BILINEAR,  # timm's train-time "random" means bilinear at eval
}

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")


# -- decoding -------------------------------------------------------------------------------------------
def _open(path: Path, max_pixels: int) -> Image.Image:
    """Image.open (header only) with our pixel cap instead of PIL's global one."""
    if not path.exists():
        raise InputError(f"image not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Our cap replaces PIL's (which is process-global); restore it right after the header is read.
            Image.MAX_IMAGE_PIXELS = None
            try:
                image = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file (or a format PIL cannot read)") from None
    except OSError as err:
        raise InputError(f"{path}: corrupt or truncated image ({err})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise InputError(
            f"{path}: {width}x{height} = {width * height / 1e6:.0f} MP exceeds the {max_pixels / 1e6:.0f} MP "
            "limit (decompression-bomb guard); raise max_pixels (--max-pixels) if the file is trusted"
        )
    if width < 1 or height < 1:
        raise InputError(f"{path}: empty image ({width}x{height})")
    return image


def _sixteen_bit_to_8(array: np.ndarray) -> np.ndarray:
    """Scale integer pixel values to 0-255: 8-bit data as is, 16-bit by 1/257, wider by the maximum."""
    top = int(array.max()) if array.size else 0
    if top <= 255 and array.min() >= 0:
        return array.astype(np.uint8)
    array = np.clip(array, 0, None).astype(np.float64)
    scale = 65535.0 if top <= 65535 else float(top)
    return np.round(array * (255.0 / scale)).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB, like timm's loader (`convert("RGB")`, alpha dropped) but scaling 16-bit data.

    Raises:
        InputError: for a mode PIL cannot convert.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        gray = _sixteen_bit_to_8(np.asarray(image))
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        finite = values[np.isfinite(values)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        gray = np.clip(np.nan_to_num(values) * scale, 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "P":
        # Palette transparency must go through RGBA first (PIL warns otherwise); alpha is then dropped.
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        return image.convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise InputError(f"image mode {mode!r} cannot be converted to RGB ({err})") from None


def load_image(
    path: str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    target_short_side: int | None = None,
) -> Image.Image:
    """Open, decode and convert an image file to RGB.

    Args:
        path: image file.
        max_pixels: refuse images with more pixels (decompression-bomb guard).
        target_short_side: the resize target; a JPEG whose shorter side is >= LARGE_IMAGE_FACTOR times this
            is decoded at a reduced DCT scale (PIL draft), other formats are reduced by an integer factor,
            keeping the shorter side >= 2 x target so the final antialiased resize still has detail.

    Raises:
        InputError: missing, non-image, corrupt/truncated, too large or unconvertible files (names the file).
    """
    path = Path(path)
    image = _open(path, max_pixels)
    try:
        short = min(image.size)
        large = target_short_side and short >= LARGE_IMAGE_FACTOR * target_short_side
        if large and image.format == "JPEG":
            keep = 2 * target_short_side / short
            image.draft(None, (math.ceil(image.size[0] * keep), math.ceil(image.size[1] * keep)))
        image.load()
        if large and min(image.size) >= LARGE_IMAGE_FACTOR * target_short_side:
            image = image.reduce(max(1, min(image.size) // (2 * target_short_side)))
        return to_rgb(image)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise InputError(f"{path}: corrupt or truncated image ({err})") from None


# -- the transform ----------------------------------------------------------------------------------------
def _center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W, C] center crop as torchvision does it (zero padding first if the image is smaller)."""
    h, w = array.shape[:2]
    if height > h or width > w:
        top, left = max(height - h, 0) // 2, max(width - w, 0) // 2
        bottom, right = max(height - h, 0) - top, max(width - w, 0) - left
        array = np.pad(array, ((top, bottom), (left, right), (0, 0)))
        h, w = array.shape[:2]
    top = int(round((h - height) / 2.0))
    left = int(round((w - width) / 2.0))
    return array[top : top + height, left : left + width]


@dataclass(frozen=True)
class EvalTransform:
    """timm-style evaluation transform. Call it on a path or PIL image -> [C, H, W] float32.

    input_size: (C, H, W); C is 3 (RGB) or 1 (grayscale, converted with ITU-R 601 luma).
    mean, std: per channel, 0-1 scale. interpolation: a FILTERS key. crop_pct: center-crop fraction.
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = DEFAULT_MEAN
    std: tuple[float, ...] = DEFAULT_STD
    interpolation: str = DEFAULT_INTERPOLATION
    crop_pct: float = DEFAULT_CROP_PCT
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        if len(self.input_size) != 3 or self.input_size[0] not in (1, 3):
            raise InputError(f"input_size must be [C, H, W] with C = 1 or 3, got {list(self.input_size)}")
        if self.interpolation not in FILTERS:
            raise InputError(f"unknown interpolation {self.interpolation!r}; one of {', '.join(FILTERS)}")
        if not 0 < self.crop_pct <= 1.5:
            raise InputError(f"crop_pct must be in (0, 1.5], got {self.crop_pct}")
        channels = self.input_size[0]
        if len(self.mean) not in (1, channels) or len(self.std) not in (1, channels):
            raise InputError(f"mean/std need {channels} values, got {list(self.mean)} / {list(self.std)}")

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, Any], input_shape: Sequence[int | None] | None = None, **overrides: Any
    ) -> EvalTransform:
        """Build from decoded slab_edge metadata; missing keys fall back to `input_shape` [N, C, H, W] and
        timm's defaults. `overrides` (non-None values) win over both."""
        size = metadata.get("input_size")
        if size is None and input_shape is not None and all(isinstance(d, int) for d in input_shape[1:]):
            size = list(input_shape[1:])
        values: dict[str, Any] = {
            "input_size": tuple(int(v) for v in size) if size else (3, 224, 224),
            "mean": tuple(metadata.get("mean") or DEFAULT_MEAN),
            "std": tuple(metadata.get("std") or DEFAULT_STD),
            "interpolation": metadata.get("interpolation") or DEFAULT_INTERPOLATION,
            "crop_pct": float(metadata.get("crop_pct") or DEFAULT_CROP_PCT),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def resize_size(self) -> tuple[int, int]:
        """(H, W) before the center crop: floor(size / crop_pct) per side, as timm computes it."""
        _, height, width = self.input_size
        return math.floor(height / self.crop_pct), math.floor(width / self.crop_pct)

    def resize(self, image: Image.Image) -> Image.Image:
        """Aspect-preserving resize: shorter side to the target for square inputs (torchvision's Resize(int)),
        the smaller of the two ratios for non-square inputs (timm's ResizeKeepRatio)."""
        width, height = image.size
        target_h, target_w = self.resize_size
        if target_h == target_w:
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = target_h, int(target_h * long / short)
            new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        else:
            ratio = min(height / target_h, width / target_w)
            new_h, new_w = round(height / ratio), round(width / ratio)
        if (new_w, new_h) == (width, height):
            return image
        return image.resize((new_w, new_h), FILTERS[self.interpolation])

    def __call__(self, image: Image.Image | str | os.PathLike) -> np.ndarray:
        """[C, H, W] float32 for one image (a path or an RGB PIL image)."""
        if not isinstance(image, Image.Image):
            image = load_image(image, self.max_pixels, min(self.resize_size))
        else:
            image = to_rgb(image)
        channels, height, width = self.input_size
        if channels == 1:
            image = image.convert("L")
        pixels = np.asarray(self.resize(image), dtype=np.uint8)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        pixels = _center_crop(pixels, height, width)
        chw = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        return np.ascontiguousarray((chw - mean) / std, dtype=np.float32)

    def batch(self, images: Sequence[Image.Image | str | os.PathLike]) -> np.ndarray:
        """[B, C, H, W] float32."""
        return np.stack([self(image) for image in images])


def preprocess_image(
    image: Image.Image | str | os.PathLike, metadata: Mapping[str, Any] | None = None, **overrides: Any
) -> np.ndarray:
    """One image -> [1, C, H, W] float32 with the model's preprocessing (metadata from `session.metadata`)."""
    return EvalTransform.from_metadata(metadata or {}, **overrides)(image)[None]


def transform_for(session, **overrides: Any) -> EvalTransform:
    """The EvalTransform for a loaded session (its metadata, else its input shape, else timm defaults)."""
    return EvalTransform.from_metadata(session.metadata, session.input.shape, **overrides)
