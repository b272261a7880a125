"""Fixtures shared across test folders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="session")
def sla_pieces():
    """bench/sla_pieces_gpu.py as a module (the candidate SLA training pieces live there)."""
    spec = importlib.util.spec_from_file_location("bench_sla_pieces_gpu", BENCH / "sla_pieces_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
