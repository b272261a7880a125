"""Fixtures shared across test folders."""

from __future__ import annotations

import importlib
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


def _native_build_module():
    try:
        return importlib.import_module("slab_edge.native.build")
    except ModuleNotFoundError:
        return None


@pytest.fixture(scope="session")
def native_build():
    """slab_edge.native.build (compiles the native targets), or a skip saying it is missing."""
    module = _native_build_module()
    if module is None:
        pytest.skip("slab_edge.native.build is not in this tree; it compiles the native targets")
    return module


@pytest.fixture(scope="session")
def plugin_toolchain():
    """nvcc and the TensorRT include folder for compiling against the plugin source: $SLAB_EDGE_NVCC and
    $SLAB_EDGE_TRT_INCLUDE, else what slab_edge.native.build uses (find_nvcc, tensorrt_include_dir)."""
    import os
    import shutil
    import types

    build = _native_build_module()

    def from_build(name):
        provider = getattr(build, name, None)
        return provider() if provider is not None else None

    nvcc = os.environ.get("SLAB_EDGE_NVCC") or from_build("find_nvcc") or shutil.which("nvcc")
    include = os.environ.get("SLAB_EDGE_TRT_INCLUDE") or from_build("tensorrt_include_dir")
    if not nvcc:
        pytest.skip("no nvcc: set SLAB_EDGE_NVCC, install the nvidia-cuda-nvcc wheel, or put nvcc on PATH")
    if not include or not (Path(include) / "NvInferRuntime.h").is_file():
        pytest.skip(f"no TensorRT headers (NvInferRuntime.h) at {include!r}: set SLAB_EDGE_TRT_INCLUDE")
    return types.SimpleNamespace(nvcc=str(nvcc), tensorrt_include=Path(include))


@pytest.fixture()
def no_built_plugin(monkeypatch, tmp_path):
    """No libslab_trt_plugin.so anywhere slab_edge.native.find_library looks."""
    from slab_edge import native

    empty = tmp_path / "no_ops"
    empty.mkdir()
    monkeypatch.setenv(native.OPS_DIR_ENV, str(empty))
    monkeypatch.setattr(native, "default_build_dir", lambda: empty)


@pytest.fixture(scope="session")
def ort_ops_library():
    """The slab ONNX Runtime custom-op library (CPU kernel) built from this tree's sources into the default
    build folder, as `make venv` does (a no-op when it is up to date). A missing toolchain fails the test:
    `make test` must be able to build it."""
    from slab_edge.native.build import build

    return build(["ort"])["ort"]
