"""Fake `tensorrt` / `tensorrt_rtx`, `cuda.bindings.runtime` and `pycuda.driver` modules for the engine tests.

They follow the documented TensorRT 10 Python API and cuda-python's `(err, *values)` convention, keep every
call in a shared log (so tests can check the order), and really move bytes: "device" memory is host memory
from ctypes, memcpy is memmove, and execute_async_v3 computes the tiny classifier's outputs from whatever
the input's device address holds — so a wrong copy, address or shape shows up as wrong numbers.
"""

from __future__ import annotations

import ctypes
import enum
import types

import numpy as np
from runtime_helpers import classifier_weights, default_metadata

from slab_edge.io import atomic_write_json
from slab_edge.runtime.metadata import EngineSidecar, encode_metadata, sidecar_path

ENGINE_BYTES = b"FAKE-TENSORRT-ENGINE v1"
NUM_CLASSES = 5


class Recorded:
    """Records every public attribute the code under test touches, as (kind, name) in `used`."""

    kind = "?"
    used: set

    def __getattribute__(self, attr):
        if not attr.startswith("_") and attr not in ("kind", "used"):
            object.__getattribute__(self, "used").add((object.__getattribute__(self, "kind"), attr))
        return object.__getattribute__(self, attr)


#: attributes of the fakes that only tests touch (not part of the real API)
FAKE_ONLY = ("used", "live", "tensors", "execute_result", "plugins_in_plan")


class RecordedModule(types.ModuleType):
    def __getattribute__(self, attr):
        if not attr.startswith("_") and attr not in FAKE_ONLY:
            types.ModuleType.__getattribute__(self, "used").add(("module", attr))
        return types.ModuleType.__getattribute__(self, attr)


class CallLog(list):
    def names(self) -> list[str]:
        return [entry[0] for entry in self]

    def first(self, name: str) -> int:
        return self.names().index(name)

    def last(self, name: str) -> int:
        return len(self) - 1 - self.names()[::-1].index(name)


# -- cuda-python ----------------------------------------------------------------------------------------
class cudaError_t(enum.IntEnum):  # noqa: N801  (cuda-python's name)
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class FakeStream:
    def __init__(self, handle: int):
        self.handle = handle

    def __int__(self) -> int:
        return self.handle


def make_cudart(log: CallLog, gpu=(b"Orin", 8, 7), fail_malloc: bool = False) -> types.ModuleType:
    """A `cuda.bindings.runtime` stand-in. `.live` holds the allocations not yet freed."""
    mod = RecordedModule("cuda.bindings.runtime")
    mod.used = set()
    mod.cudaError_t, mod.cudaMemcpyKind = cudaError_t, cudaMemcpyKind
    mod.live = {}
    ok = cudaError_t.cudaSuccess

    def alloc(kind):
        def fn(nbytes):
            log.append((kind, nbytes))
            if fail_malloc and kind == "cudaMalloc":
                return (cudaError_t.cudaErrorMemoryAllocation, 0)
            buffer = ctypes.create_string_buffer(int(nbytes))
            mod.live[ctypes.addressof(buffer)] = (kind, buffer)
            return (ok, ctypes.addressof(buffer))

        return fn

    def free(kind, owner):
        def fn(ptr):
            log.append((kind, ptr))
            assert mod.live.pop(int(ptr))[0] == owner, f"{kind} on memory from another allocator"
            return (ok,)

        return fn

    def memcpy(dst, src, count, kind, stream):
        log.append(("cudaMemcpyAsync", kind.name, int(count)))
        assert isinstance(stream, FakeStream), "copies must be on the session's stream"
        ctypes.memmove(int(dst), int(src), int(count))
        return (ok,)

    def props(device):
        name, major, minor = gpu
        return (ok, types.SimpleNamespace(name=name, major=major, minor=minor))

    mod.cudaMalloc, mod.cudaMallocHost = alloc("cudaMalloc"), alloc("cudaMallocHost")
    mod.cudaFree, mod.cudaFreeHost = free("cudaFree", "cudaMalloc"), free("cudaFreeHost", "cudaMallocHost")
    mod.cudaMemcpyAsync = memcpy
    mod.cudaSetDevice = lambda device: (log.append(("cudaSetDevice", device)), (ok,))[1]
    mod.cudaStreamCreate = lambda: (log.append(("cudaStreamCreate",)), (ok, FakeStream(0xBEEF)))[1]
    mod.cudaStreamSynchronize = lambda stream: (log.append(("cudaStreamSynchronize",)), (ok,))[1]
    mod.cudaStreamDestroy = lambda stream: (log.append(("cudaStreamDestroy",)), (ok,))[1]
    mod.cudaGetDeviceProperties = props
    return mod


# -- tensorrt -----------------------------------------------------------------------------------------------
SLA_CREATOR = ("SlabLinearAttention", "1", "slab")


def make_tensorrt(
    log: CallLog,
    name: str = "tensorrt",
    version: str = "10.3.0.30",
    max_batch: int = 4,
    engine_plugins: tuple = (),
    plugin_provides: tuple = (SLA_CREATOR,),
    plugin_refused: bool = False,
):
    """A `tensorrt` (or `tensorrt_rtx`) stand-in serving one engine: image [-1, 3, 8, 8] float32 ->
    logits [-1, 5] float32 and pooled [-1, 3] float16 (global average pool -> linear).

    engine_plugins: (name, version, namespace) creators the engine's plugin layers need: deserializing fails
    unless they are registered, as in TensorRT (set `trt.plugins_in_plan` for a plan that carries them);
    plugin_provides: what a loaded plugin library registers; plugin_refused: load_library fails.
    """
    trt = RecordedModule(name)
    trt.used = used = set()
    trt.__version__ = version
    weight, bias = classifier_weights()

    class PluginRegistry(Recorded):
        kind = "IPluginRegistry"

        def __init__(self):
            self.used = used
            self._creators: set[tuple[str, str, str]] = set()

        def load_library(self, plugin_path):
            log.append(("load_library", plugin_path))
            if plugin_refused:
                return None
            self._creators |= set(plugin_provides)
            return object()

        def get_creator(self, type, version, plugin_namespace=""):  # noqa: A002  (TensorRT's argument name)
            key = (type, version, plugin_namespace)
            return key if key in self._creators else None

    registry = PluginRegistry()

    class DataType(enum.Enum):
        FLOAT = "float32"
        HALF = "float16"
        BF16 = "bf16"

    class TensorIOMode(enum.Enum):
        NONE = 0
        INPUT = 1
        OUTPUT = 2

    class Logger:
        ERROR, WARNING, INFO, VERBOSE = 1, 2, 3, 4

        def __init__(self, severity):
            self.min_severity = severity

    def nptype(dtype):
        if dtype is DataType.BF16:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return np.dtype(dtype.value).type

    tensors = {
        "image": (TensorIOMode.INPUT, DataType.FLOAT, (-1, 3, 8, 8)),
        "logits": (TensorIOMode.OUTPUT, DataType.FLOAT, (-1, NUM_CLASSES)),
        "pooled": (TensorIOMode.OUTPUT, DataType.HALF, (-1, 3)),
    }

    class ExecutionContext(Recorded):
        kind = "IExecutionContext"

        def __init__(self):
            self.used = used
            self._shapes, self._addresses = {}, {}

        def set_input_shape(self, tensor, shape):
            log.append(("set_input_shape", tensor, tuple(shape)))
            if tensors[tensor][0] is not TensorIOMode.INPUT or len(shape) != 4:
                return False
            if not 1 <= shape[0] <= max_batch or tuple(shape[1:]) != (3, 8, 8):
                return False
            self._shapes[tensor] = tuple(shape)
            return True

        def get_tensor_shape(self, tensor):
            batch = self._shapes.get("image", (-1,))[0]
            return (batch, *tensors[tensor][2][1:])

        def set_tensor_address(self, tensor, ptr):
            log.append(("set_tensor_address", tensor))
            self._addresses[tensor] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle):
            log.append(("execute_async_v3", stream_handle))
            assert isinstance(stream_handle, int), "execute_async_v3 takes the stream as an int"
            assert set(self._addresses) == set(tensors), "every IO tensor needs an address"
            batch = self._shapes["image"][0]
            n_in = batch * 3 * 8 * 8
            image = np.ctypeslib.as_array((ctypes.c_float * n_in).from_address(self._addresses["image"]))
            pooled = image.reshape(batch, 3, 64).astype(np.float64).mean(-1)
            logits = (pooled @ weight + bias).astype(np.float32)
            ctypes.memmove(self._addresses["logits"], logits.ctypes.data, logits.nbytes)
            half = pooled.astype(np.float16)
            ctypes.memmove(self._addresses["pooled"], half.ctypes.data, half.nbytes)
            return trt.execute_result

    class CudaEngine(Recorded):
        kind = "ICudaEngine"
        num_io_tensors = len(tensors)
        num_optimization_profiles = 1

        def get_tensor_name(self, index):
            return list(tensors)[index]

        def get_tensor_mode(self, tensor):
            return tensors[tensor][0]

        def get_tensor_dtype(self, tensor):
            return tensors[tensor][1]

        def get_tensor_shape(self, tensor):
            return tensors[tensor][2]

        def get_tensor_profile_shape(self, tensor, profile_index):
            return (1, 3, 8, 8), (1, 3, 8, 8), (max_batch, 3, 8, 8)

        def __init__(self):
            self.used = used

        def create_execution_context(self):
            log.append(("create_execution_context",))
            return ExecutionContext()

    class Runtime(Recorded):
        kind = "Runtime"

        def __init__(self, logger):
            self.used = used
            log.append(("Runtime",))
            self._logger = logger
            self._dla_core = -1

        @property
        def DLA_core(self):  # noqa: N802  (TensorRT's name)
            return self._dla_core

        @DLA_core.setter
        def DLA_core(self, core):  # noqa: N802
            log.append(("DLA_core", core))
            used.add(("Runtime", "DLA_core"))
            self._dla_core = core

        @property
        def engine_host_code_allowed(self):
            return getattr(self, "_host_code", False)

        @engine_host_code_allowed.setter
        def engine_host_code_allowed(self, allowed):
            log.append(("engine_host_code_allowed", allowed))
            used.add(("Runtime", "engine_host_code_allowed"))
            self._host_code = allowed

        def load_runtime(self, path):
            log.append(("load_runtime", path))
            return Runtime(self._logger)

        def deserialize_cuda_engine(self, data):
            log.append(("deserialize_cuda_engine", len(data)))
            plugins_found = trt.plugins_in_plan or all(registry.get_creator(*p) for p in engine_plugins)
            return CudaEngine() if bytes(data) == ENGINE_BYTES and plugins_found else None

    trt.DataType, trt.TensorIOMode, trt.Logger, trt.Runtime, trt.nptype = (
        DataType,
        TensorIOMode,
        Logger,
        Runtime,
        nptype,
    )
    trt.ICudaEngine, trt.IExecutionContext = CudaEngine, ExecutionContext
    trt.IPluginRegistry = PluginRegistry
    trt.get_plugin_registry = lambda: registry
    trt.plugins_in_plan = False
    trt.execute_result = True
    trt.tensors = tensors
    return trt


# -- pycuda ----------------------------------------------------------------------------------------------
def make_pycuda(log: CallLog, gpu=("Orin", 8, 7)) -> types.ModuleType:
    """A `pycuda.driver` stand-in (mem_alloc, pagelocked_empty, memcpy_*_async, Stream, Device, context)."""
    driver = types.ModuleType("pycuda.driver")
    driver.live = {}

    class DeviceAllocation:
        def __init__(self, nbytes):
            self._buffer = ctypes.create_string_buffer(nbytes)
            driver.live[int(self)] = self

        def __int__(self):
            return ctypes.addressof(self._buffer)

        def free(self):
            log.append(("mem_free",))
            driver.live.pop(int(self))

    class Stream:
        handle = 0xCAFE

        def synchronize(self):
            log.append(("stream.synchronize",))

    class Context:
        def pop(self):
            log.append(("context.pop",))

    class Device:
        def __init__(self, index):
            self.index = index

        def make_context(self):
            log.append(("make_context", self.index))
            return Context()

        def compute_capability(self):
            return gpu[1], gpu[2]

        def name(self):
            return gpu[0]

    def memcpy_htod_async(dest, src, stream):
        log.append(("memcpy_htod_async", src.nbytes))
        ctypes.memmove(int(dest), src.ctypes.data, src.nbytes)

    def memcpy_dtoh_async(dest, src, stream):
        log.append(("memcpy_dtoh_async", dest.nbytes))
        ctypes.memmove(dest.ctypes.data, int(src), dest.nbytes)

    driver.init = lambda: log.append(("cuInit",))
    driver.Device, driver.Stream = Device, Stream
    driver.mem_alloc = lambda nbytes: (log.append(("mem_alloc", nbytes)), DeviceAllocation(nbytes))[1]
    driver.pagelocked_empty = lambda shape, dtype: np.zeros(shape, dtype)
    driver.memcpy_htod_async, driver.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    return driver


# -- engine files -------------------------------------------------------------------------------------------
def write_engine(folder, flavour="tensorrt", version="10.3.0.30", cc="8.7", gpu="Orin", options=None,
                 data=ENGINE_BYTES, sidecar=True, name="model.engine", plugins=None):  # fmt: skip
    """The fake engine's file and (unless sidecar=False) its sidecar, as `slab-edge build` writes them."""
    path = folder / name
    path.write_bytes(data)
    if sidecar:
        side = EngineSidecar(
            builder={"flavour": flavour, "version": version},
            gpu={"name": gpu, "compute_capability": cc},
            precision="fp16",
            profiles=[{"image": {"min": [1, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [4, 3, 8, 8]}}],
            onnx_metadata=encode_metadata(default_metadata(size=8)),
            options=options or {},
            plugins=plugins or [],
        )
        atomic_write_json(sidecar_path(path), side.to_json())
    return path


def batch_of(n: int, seed: int = 0) -> np.ndarray:
    """A batch for the fake engine's image input [n, 3, 8, 8]."""
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)
