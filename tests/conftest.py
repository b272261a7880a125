"""Fixtures shared across test folders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench_module(name: str):
    """bench/<name>.py as a module (benchmark scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def sla_pieces():
    """bench/sla_pieces_gpu.py (the candidate SLA training pieces live there)."""
    return load_bench_module("sla_pieces_gpu")


@pytest.fixture(scope="session")
def ort_ops_library():
    """The slab ONNX Runtime custom-op library (CPU kernel) built from this tree's sources into the default
    build folder, as `make venv` does (a no-op when it is up to date). A missing toolchain fails the test:
    `make test` must be able to build it."""
    from slab_edge.native.build import build

    return build(["ort"])["ort"]
