"""Real CUDA through cuda-python (GPU machine only): buffers, copies, the stream, and the TensorRT session's
memory path driven by a stand-in engine whose "inference" is a device-to-device copy on the session stream.

TensorRT itself cannot run in this workplace; this checks everything around it on a real GPU.
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from slab_edge.runtime import load
from slab_edge.runtime.cuda_memory import CudaMemory, cuda_call
from slab_edge.runtime.metadata import EngineSidecar, sidecar_path

pytestmark = pytest.mark.gpu


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        pytest.skip("cuda-python is not installed")
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count < 1:
        pytest.skip("no CUDA GPU")
    return cudart


def test_round_trip_through_device_memory():
    _cudart()
    memory = CudaMemory(0)
    try:
        gpu = memory.gpu()
        assert gpu["name"] and gpu["compute_capability"].replace(".", "").isdigit()
        data = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)
        device = memory.device_buffer(data.nbytes)
        src, dst = memory.pinned_buffer(data.nbytes), memory.pinned_buffer(data.nbytes)
        np.copyto(src.view(data.shape, data.dtype), data)
        dst.view(data.shape, data.dtype)[...] = 0
        memory.copy_to_device(device, src, data.nbytes)
        memory.copy_to_host(dst, device, data.nbytes)
        memory.synchronize()
        np.testing.assert_array_equal(dst.view(data.shape, data.dtype), data)
        for buffer in (device, src, dst):
            buffer.free()
            buffer.free()  # idempotent
    finally:
        memory.close()


def identity_tensorrt(cudart, version="10.3.0.30"):
    """A `tensorrt` stand-in: one engine, x [-1, 4] float32 -> y = x, computed as a device-to-device copy."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Mode:
        INPUT, OUTPUT = "in", "out"

    class Logger:
        ERROR = WARNING = INFO = VERBOSE = 0

        def __init__(self, severity):
            pass

    class Context:
        def __init__(self):
            self.shape, self.addresses = None, {}

        def set_input_shape(self, name, shape):
            self.shape = tuple(shape)
            return 1 <= shape[0] <= 64

        def get_tensor_shape(self, name):
            return self.shape

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def execute_async_v3(self, stream_handle):
            nbytes = int(np.prod(self.shape)) * 4
            kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
            cuda_call(
                cudart.cudaMemcpyAsync(self.addresses["y"], self.addresses["x"], nbytes, kind, stream_handle)
            )
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["x", "y"][i]

        def get_tensor_mode(self, name):
            return Mode.INPUT if name == "x" else Mode.OUTPUT

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_shape(self, name):
            return (-1, 4)

        def get_tensor_profile_shape(self, name, index):
            return (1, 4), (1, 4), (64, 4)

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"identity" else None

    trt.TensorIOMode, trt.Logger, trt.Runtime = Mode, Logger, Runtime
    trt.nptype = lambda dtype: np.dtype(dtype).type
    return trt


def test_engine_session_memory_path_on_a_real_gpu(tmp_path, monkeypatch):
    cudart = _cudart()
    memory = CudaMemory(0)
    gpu = memory.gpu()
    memory.close()
    monkeypatch.setitem(sys.modules, "tensorrt", identity_tensorrt(cudart))
    engine = tmp_path / "identity.engine"
    engine.write_bytes(b"identity")
    sidecar = EngineSidecar({"flavour": "tensorrt", "version": "10.3.0.30"}, gpu, "fp32", [])
    sidecar_path(engine).write_text(json.dumps(sidecar.to_json()))
    free_before = cuda_call(cudart.cudaMemGetInfo())[0]
    with load(engine) as session:
        for batch in (1, 7, 64, 3):
            x = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
            np.testing.assert_array_equal(session.run(x)["y"], x)
    free_after = cuda_call(cudart.cudaMemGetInfo())[0]
    assert free_after >= free_before - (1 << 20)  # buffers released (allocator granularity aside)
    other = EngineSidecar({"flavour": "tensorrt", "version": "10.3.0.30"},
                          {"name": "Orin", "compute_capability": "8.7"}, "fp32", [])  # fmt: skip
    if gpu["compute_capability"] != "8.7":
        sidecar_path(engine).write_text(json.dumps(other.to_json()))
        with pytest.raises(Exception, match=r"compute capability 8\.7\) but this GPU is"):
            load(engine)
