"""Device memory, pinned host memory and streams for the TensorRT session.

Two interchangeable back ends with one small interface (`CudaMemory`):
  - cuda-python (default; what NVIDIA's TensorRT samples use since 10.14): `cuda.bindings.runtime`
    (older cuda-python: `cuda.cudart`). Every call returns an `(err, *values)` tuple; `cuda_call()` turns
    a non-success `err` into a BackendError, so no error code is ever dropped.
  - pycuda (select with memory="pycuda"): raises its own exceptions already.

Buffers are small RAII classes: `free()` is idempotent and also runs from `__del__`, so a failed run
never leaks device memory.
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Any

import numpy as np

from slab_edge.errors import BackendError


def import_cudart():
    """The cuda-python runtime module (`cuda.bindings.runtime`, or `cuda.cudart` before cuda-python 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise BackendError(
                "cuda-python is not installed: pip install 'cuda-python' (or pass memory='pycuda')"
            ) from None
    return cudart


def cuda_call(result: Any) -> Any:
    """Check a cuda-python result tuple `(err, *values)`; return None, the value, or the tuple of values.

    Raises:
        BackendError: naming the CUDA error when `err` is not success.
    """
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if err != type(err)(0):  # cudaSuccess / CUDA_SUCCESS are both 0 in their enums
        name = getattr(err, "name", str(err))
        raise BackendError(f"CUDA error {name} ({int(err)})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


class _Buffer:
    nbytes: int
    ptr: int

    def free(self) -> None:
        raise NotImplementedError

    def __del__(self):
        with contextlib.suppress(Exception):
            self.free()


class DeviceBuffer(_Buffer):
    """`nbytes` of device memory from cudaMalloc; `ptr` is the device address TensorRT binds."""

    def __init__(self, cudart, nbytes: int):
        self._cudart = cudart
        self.nbytes = int(nbytes)
        self.ptr = 0
        # cudaMalloc(0) may hand back a null pointer, which TensorRT rejects as a tensor address.
        self.ptr = int(cuda_call(cudart.cudaMalloc(max(self.nbytes, 1))))

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            cuda_call(self._cudart.cudaFree(ptr))


class PinnedBuffer(_Buffer):
    """Page-locked host memory from cudaMallocHost (async copies need it), viewed as a numpy array."""

    def __init__(self, cudart, nbytes: int):
        self._cudart = cudart
        self.nbytes = int(nbytes)
        self.ptr = 0
        self.ptr = int(cuda_call(cudart.cudaMallocHost(max(self.nbytes, 1))))

    def view(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A numpy array over the first prod(shape) elements (no copy)."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize > self.nbytes:
            raise BackendError(f"pinned buffer of {self.nbytes} bytes cannot hold {shape} {dtype.name}")
        raw = (ctypes.c_ubyte * max(self.nbytes, 1)).from_address(self.ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            cuda_call(self._cudart.cudaFreeHost(ptr))


class CudaMemory:
    """cuda-python back end: one device, one stream, device + pinned buffers, async copies."""

    name = "cuda-python"

    def __init__(self, device: int = 0):
        self.cudart = import_cudart()
        cuda_call(self.cudart.cudaSetDevice(int(device)))
        self.device = int(device)
        self._stream = cuda_call(self.cudart.cudaStreamCreate())

    @property
    def stream_handle(self) -> int:
        """The stream as the integer TensorRT's execute_async_v3 takes."""
        return int(self._stream)

    def gpu(self) -> dict[str, str]:
        """{"name", "compute_capability"} of the current device."""
        props = cuda_call(self.cudart.cudaGetDeviceProperties(self.device))
        name = props.name
        if isinstance(name, bytes):
            name = name.split(b"\0", 1)[0].decode(errors="replace")
        return {"name": str(name), "compute_capability": f"{props.major}.{props.minor}"}

    def device_buffer(self, nbytes: int) -> DeviceBuffer:
        return DeviceBuffer(self.cudart, nbytes)

    def pinned_buffer(self, nbytes: int) -> PinnedBuffer:
        return PinnedBuffer(self.cudart, nbytes)

    def copy_to_device(self, dst: DeviceBuffer, src: PinnedBuffer, nbytes: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        cuda_call(self.cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, self._stream))

    def copy_to_host(self, dst: PinnedBuffer, src: DeviceBuffer, nbytes: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_call(self.cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, self._stream))

    def synchronize(self) -> None:
        cuda_call(self.cudart.cudaStreamSynchronize(self._stream))

    def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            cuda_call(self.cudart.cudaStreamDestroy(stream))


# -- pycuda -----------------------------------------------------------------------------------------------
class _PycudaDevice(_Buffer):
    def __init__(self, driver, nbytes: int):
        self.nbytes = int(nbytes)
        self._alloc = driver.mem_alloc(max(self.nbytes, 1))
        self.ptr = int(self._alloc)

    def free(self) -> None:
        if self._alloc is not None:
            alloc, self._alloc, self.ptr = self._alloc, None, 0
            alloc.free()


class _PycudaPinned(_Buffer):
    def __init__(self, driver, nbytes: int):
        self.nbytes = int(nbytes)
        self._array = driver.pagelocked_empty(max(self.nbytes, 1), np.uint8)
        self.ptr = int(self._array.ctypes.data)

    def view(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize > self.nbytes:
            raise BackendError(f"pinned buffer of {self.nbytes} bytes cannot hold {shape} {dtype.name}")
        return self._array[: count * dtype.itemsize].view(dtype).reshape(shape)

    def free(self) -> None:
        self._array = None
        self.ptr = 0


class PycudaMemory:
    """pycuda back end (memory="pycuda"): same interface as CudaMemory; owns its CUDA context."""

    name = "pycuda"

    def __init__(self, device: int = 0):
        try:
            import pycuda.driver as driver
        except ImportError:
            raise BackendError(
                "pycuda is not installed: pip install pycuda (or use memory='cuda-python')"
            ) from None
        driver.init()
        self.driver = driver
        self.device = int(device)
        self._device = driver.Device(self.device)
        self._context = self._device.make_context()
        self._stream = driver.Stream()

    @property
    def stream_handle(self) -> int:
        return int(self._stream.handle)

    def gpu(self) -> dict[str, str]:
        major, minor = self._device.compute_capability()
        return {"name": str(self._device.name()), "compute_capability": f"{major}.{minor}"}

    def device_buffer(self, nbytes: int) -> _PycudaDevice:
        return _PycudaDevice(self.driver, nbytes)

    def pinned_buffer(self, nbytes: int) -> _PycudaPinned:
        return _PycudaPinned(self.driver, nbytes)

    def copy_to_device(self, dst, src, nbytes: int) -> None:
        self.driver.memcpy_htod_async(dst.ptr, src.view((nbytes,), np.uint8), self._stream)

    def copy_to_host(self, dst, src, nbytes: int) -> None:
        self.driver.memcpy_dtoh_async(dst.view((nbytes,), np.uint8), src.ptr, self._stream)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        if self._context is not None:
            context, self._context = self._context, None
            self._stream = None
            context.pop()


MEMORY_BACKENDS = {"cuda-python": CudaMemory, "pycuda": PycudaMemory}


def open_memory(kind: str = "cuda-python", device: int = 0):
    """A CudaMemory or PycudaMemory for `device`."""
    if kind not in MEMORY_BACKENDS:
        raise BackendError(f"unknown memory back end {kind!r}; choose one of {', '.join(MEMORY_BACKENDS)}")
    return MEMORY_BACKENDS[kind](device)
