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


# Stand-ins for TensorRT plugin libraries, compiled with the system C compiler: `plugin` exports the entry
# points IPluginRegistry.load_library looks up (so slab-edge's ctypes check passes and the fake registry takes
# it), `no_entry_points` is a valid shared library without them, `not_a_library` is not ELF at all.
_PLUGIN_STAND_IN = """
void* getCreators(int* count) { *count = 0; return 0; }
void setLoggerFinder(void* finder) { (void)finder; }
"""
_OTHER_LIBRARY = "int slab_edge_test_answer(void) { return 42; }\n"


@pytest.fixture(scope="session")
def plugin_libraries(tmp_path_factory):
    import shutil
    import subprocess
    import types

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc/gcc) on PATH to build stand-in plugin libraries")
    folder = tmp_path_factory.mktemp("plugin_libraries")
    built = {}
    for name, source in (("plugin", _PLUGIN_STAND_IN), ("no_entry_points", _OTHER_LIBRARY)):
        src = folder / f"{name}.c"
        src.write_text(source)
        built[name] = folder / f"lib{name}.so"
        subprocess.run([cc, "-shared", "-fPIC", "-o", str(built[name]), str(src)], check=True)
    built["not_a_library"] = folder / "libnotalibrary.so"
    built["not_a_library"].write_text("this is not a shared library\n")
    return types.SimpleNamespace(**built)
