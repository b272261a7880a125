"""The TensorRT plugin (slab_edge/native/csrc/trt_sla_plugin.cpp) on a machine without TensorRT or a GPU:

- compiled by the project's build (`build(["trt"], compile_only=True)`, sm_87 and sm_90), it exports the
  entry points IPluginRegistry.load_library needs and requires no libnvinfer symbol;
- compiled against a recording stub of the kernel ABI, a harness (trt_plugin_harness.cpp) drives it the way
  TensorRT does (entry points, creator, PluginFields, every IPluginV3 capability, serialization, enqueue).

Both need nvcc and TensorRT headers (the build module provides them; SLAB_EDGE_NVCC and
SLAB_EDGE_TRT_INCLUDE override: tests/conftest.py `plugin_toolchain`) and skip, saying what is missing,
without them. The plugin itself runs only under real TensorRT on a GPU: see runtime/README.md.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from slab_edge import native

HERE = Path(__file__).resolve().parent
ENTRY_POINTS = {"getCreators", "setLoggerFinder"}


def symbols(path: Path, *flags: str) -> set[str]:
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no nm (binutils) to list the library's symbols")
    dynamic = ["-D"] if path.suffix == ".so" else []
    out = subprocess.run([nm, *dynamic, *flags, str(path)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_plugin_compiles_for_jetson_and_hopper_and_exports_its_entry_points(tmp_path, native_build):
    built = native_build.build(["trt"], out_dir=tmp_path, cuda_archs=["87", "90"], compile_only=True)
    library = Path(built["trt"])
    assert library.is_file(), built
    defined = symbols(library, "--defined-only")
    assert defined >= ENTRY_POINTS, sorted(defined)[:20]
    needed = symbols(library, "--undefined-only")
    assert not [s for s in needed if "nvinfer" in s.lower()], "the plugin must not need libnvinfer"
    if library.suffix == ".so":
        dynamic = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True).stdout
        assert "libnvinfer" not in dynamic
        print(f"{library.name}: exports {sorted(defined)}")


def test_harness_drives_the_plugin_like_tensorrt(tmp_path, plugin_toolchain):
    compiler, include = plugin_toolchain.nvcc, plugin_toolchain.tensorrt_include
    csrc = native.csrc_dir()
    common = ["-std=c++17", f"-I{csrc}", f"-I{HERE}", "-isystem", str(include)]
    warnings = ["-Xcompiler", "-Wall,-Wextra,-Werror"]

    def run(*args: str) -> None:
        proc = subprocess.run([compiler, *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-4000:]

    run(*common, *warnings, "-Xcompiler", "-fPIC,-fvisibility=hidden", "-c", str(csrc / "trt_sla_plugin.cpp"),
        "-o", str(tmp_path / "plugin.o"))  # fmt: skip
    run(*common, "-Xcompiler", "-fPIC", "-c", str(HERE / "sla_abi_recorder.c"), "-o", str(tmp_path / "rec.o"))
    library = tmp_path / "libslab_trt_plugin.so"
    version_script = f"--version-script={csrc / 'trt_sla_plugin.map'}"
    run("-shared", "-Xlinker", "--no-undefined", "-Xlinker", version_script, str(tmp_path / "plugin.o"),
        str(tmp_path / "rec.o"), "-o", str(library))  # fmt: skip
    assert symbols(library, "--defined-only") == ENTRY_POINTS  # the version script leaves nothing else
    harness = tmp_path / "harness"
    run(*common, *warnings, str(HERE / "trt_plugin_harness.cpp"), "-o", str(harness), "-ldl")
    proc = subprocess.run([str(harness), str(library)], capture_output=True, text=True, timeout=60)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith(", 0 failed")
