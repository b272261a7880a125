"""The TensorRT plugin's enqueue with the real fused kernel on a GPU, without TensorRT (not installable in
this workplace): `build(["trt"])` links trt_sla_plugin.cpp with sla_attention_cuda.cu, and
trt_plugin_gpu_harness.cu creates the plugin from its creator, sizes the workspace and runs enqueue on device
tensors for fp32 / fp16 / bf16 and zoo shapes against a float64 reference (tolerances in the harness), under
compute-sanitizer when present.

    python3 -m pytest tests/gpu -m gpu -k trt_plugin -s
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from slab_edge import native

pytestmark = pytest.mark.gpu
HERE = Path(__file__).resolve().parent


def test_trt_plugin_enqueue_runs_the_fused_kernel(needs_cuda, native_build, plugin_toolchain, tmp_path):
    library = Path(native_build.build(["trt"], out_dir=tmp_path)["trt"])
    harness = tmp_path / "trt_plugin_gpu_harness"
    include = str(plugin_toolchain.tensorrt_include)
    includes = [f"-I{native.csrc_dir()}", f"-I{HERE.parent / 'native'}", "-isystem", include]
    source = HERE / "trt_plugin_gpu_harness.cu"
    compile_cmd = [plugin_toolchain.nvcc, "-std=c++17", *includes, str(source), "-o", str(harness), "-ldl"]
    proc = subprocess.run(compile_cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    command = [str(harness), str(library)]
    sanitizer = shutil.which("compute-sanitizer")
    if sanitizer is not None:
        command = [sanitizer, "--tool", "memcheck", "--error-exitcode", "3", *command]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.stdout.rstrip().endswith(", 0 failed")
    if sanitizer is not None:
        assert "ERROR SUMMARY: 0 errors" in proc.stdout + proc.stderr
    else:
        print("compute-sanitizer not on PATH: the memcheck run was skipped")
