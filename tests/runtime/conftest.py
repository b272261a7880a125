"""Fixtures for runtime tests (helpers live in runtime_helpers.py so test modules can import them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_helpers import make_classifier, write_image


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_onnx(model_dir) -> Path:
    """Dynamic-batch tiny classifier with full slab_edge metadata, 32x32 input."""
    return make_classifier(model_dir / "tiny.onnx")


@pytest.fixture(scope="session")
def tiny_onnx_b2(model_dir) -> Path:
    """Another tiny classifier (different weights) for A/B and compare tests."""
    return make_classifier(model_dir / "tiny_b.onnx", seed=1)


@pytest.fixture(scope="session")
def fixed_batch_onnx(model_dir) -> Path:
    return make_classifier(model_dir / "fixed.onnx", batch=1)


@pytest.fixture(scope="session")
def bare_onnx(model_dir) -> Path:
    """No slab_edge metadata at all (a foreign ONNX file)."""
    return make_classifier(model_dir / "bare.onnx", metadata={}, size=24)


@pytest.fixture()
def image_dir(tmp_path) -> Path:
    """A folder with three good images of different modes and two bad files."""
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "a.png", "RGB", seed=1)
    write_image(folder / "b.jpg", "L", size=(50, 64), seed=2)
    write_image(folder / "c.png", "RGBA", seed=3)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (folder / "notes.png").write_text("hello")
    return folder
