"""Fixtures for runtime tests (helpers live in runtime_helpers.py so test modules can import them)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from fake_trt import CallLog, make_cudart, make_pycuda, make_tensorrt
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


class Fakes(types.SimpleNamespace):
    """The fake `tensorrt`, `tensorrt_rtx`, `cuda.bindings.runtime` and `pycuda.driver` modules of one test,
    sharing one call log."""


@pytest.fixture()
def install_fakes(monkeypatch):
    """install(**make_tensorrt options of the `tensorrt` fake) puts the fakes in sys.modules for a test."""

    def install(**trt_options) -> Fakes:
        log = CallLog()
        cudart = make_cudart(log)
        cuda_pkg, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        cuda_pkg.bindings, bindings.runtime = bindings, cudart
        trt = make_tensorrt(log, **trt_options)
        rtx = make_tensorrt(log, "tensorrt_rtx", "1.7.1.116")
        driver = make_pycuda(log)
        pycuda_pkg = types.ModuleType("pycuda")
        pycuda_pkg.driver = driver
        for name, module in {
            "cuda": cuda_pkg,
            "cuda.bindings": bindings,
            "cuda.bindings.runtime": cudart,
            "tensorrt": trt,
            "tensorrt_rtx": rtx,
            "pycuda": pycuda_pkg,
            "pycuda.driver": driver,
        }.items():
            monkeypatch.setitem(sys.modules, name, module)
        return Fakes(log=log, cudart=cudart, trt=trt, rtx=rtx, driver=driver, monkeypatch=monkeypatch)

    return install


@pytest.fixture()
def fakes(install_fakes) -> Fakes:
    return install_fakes()
