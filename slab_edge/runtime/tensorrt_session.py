"""TensorRT / TensorRT-RTX engine session, written to the TensorRT 10 Python API.

Steps (the order TensorRT requires):
  1. read the sidecar JSON next to the engine; refuse an engine built by another TensorRT version or
     flavour, or for another GPU (compute capability) — deserializing it would fail with a cryptic
     log line or, worse, a crash;
  2. load the plugin libraries the engine needs into TensorRT's plugin registry (the sidecar names them;
     `plugin=` / `--plugin` overrides);
  3. trt.Runtime(logger) (.DLA_core for DLA engines) -> deserialize_cuda_engine -> create_execution_context;
  4. per run: context.set_input_shape for every input (dynamic shapes), output shapes from
     context.get_tensor_shape, host->device copies, set_tensor_address for every IO tensor,
     execute_async_v3(stream), device->host copies, stream synchronize.

Device memory comes from cuda-python by default (`cuda_memory.CudaMemory`), or pycuda (memory="pycuda").
Nothing here runs in this project's CI (no TensorRT can execute an engine there); tests drive it through
fake `tensorrt` and `cuda` modules that record the calls.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from typing import Any

import numpy as np

from slab_edge.errors import BackendError, InputError
from slab_edge.runtime.cuda_memory import open_memory
from slab_edge.runtime.metadata import EngineSidecar, decode_metadata, sidecar_path
from slab_edge.runtime.session import Session, TensorSpec
from slab_edge.runtime.tensorrt_plugins import (
    PluginId,
    file_sha256,
    find_plugin_library,
    load_plugin_library,
    registered,
)

FLAVOURS = ("tensorrt", "tensorrt_rtx")


def import_tensorrt(flavour: str | None = None):
    """`tensorrt` or `tensorrt_rtx` (same API family); None tries tensorrt first.

    Returns:
        (module, flavour name)
    """
    candidates = [flavour] if flavour else list(FLAVOURS)
    for name in candidates:
        if name not in FLAVOURS:
            raise InputError(f"unknown TensorRT flavour {name!r}; choose one of {', '.join(FLAVOURS)}")
        try:
            return importlib.import_module(name), name
        except ImportError:
            continue
    wanted = " or ".join(candidates)
    raise BackendError(
        f"{wanted} is not importable: on Jetson it comes with JetPack (apt install python3-libnvinfer); "
        "on x86 pip install tensorrt (or tensorrt-rtx-cu13 for TensorRT-RTX)"
    )


def read_sidecar(engine_path: str | os.PathLike) -> EngineSidecar | None:
    """The engine's sidecar (`<engine>.json`), or None if there is none. A corrupt one raises BackendError."""
    path = sidecar_path(engine_path)
    if not path.exists():
        return None
    try:
        return EngineSidecar.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise BackendError(f"{path}: engine sidecar is not valid JSON ({err})") from None


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_builder(sidecar: EngineSidecar, flavour: str, version: str) -> None:
    """Raise BackendError unless this TensorRT (flavour + version) can deserialize the sidecar's engine.

    Plain engines need the exact build version (every component both strings give); engines built with
    the version-compatible flag run on the same or a later version of the same major release.
    """
    built_flavour = sidecar.builder.get("flavour", "?")
    built_version = str(sidecar.builder.get("version", "?"))
    if built_flavour != flavour:
        raise BackendError(
            f"engine was built by {built_flavour} {built_version} but this runtime uses {flavour} {version}; "
            "rebuild the engine from the ONNX with the runtime's builder"
        )
    built, running = _version_tuple(built_version), _version_tuple(version)
    if not built or not running:
        raise BackendError(f"cannot compare TensorRT versions {built_version!r} and {version!r}")
    if sidecar.options.get("version_compatible"):
        ok = running[0] == built[0] and running >= built
        rule = "a version-compatible engine needs the same major version, same or newer"
    else:
        n = min(len(built), len(running))
        ok = built[:n] == running[:n]
        rule = "engines run only on the TensorRT version that built them"
    if not ok:
        raise BackendError(
            f"engine was built with {built_flavour} {built_version} but the running {flavour} is {version} "
            f"({rule}); rebuild the engine on this device from the ONNX"
        )


def check_gpu(sidecar: EngineSidecar, gpu: dict[str, str]) -> None:
    """Raise BackendError when the engine was built for another compute capability than the running GPU."""
    built_cc = str(sidecar.gpu.get("compute_capability", "none"))
    running_cc = str(gpu.get("compute_capability"))
    built_name = sidecar.gpu.get("name", "?")
    if built_cc in ("none", "", "?"):
        return  # TensorRT-RTX builds on a CPU-only machine: the engine is JIT-specialised on first run
    level = str(sidecar.options.get("hardware_compatibility", "none")).lower()
    if level in ("ampere_plus", "ampere+"):
        if _version_tuple(running_cc) < (8, 0):
            raise BackendError(
                f"engine is hardware-compatible for Ampere or newer (compute capability >= 8.0) but this GPU "
                f"{gpu.get('name')} has compute capability {running_cc}"
            )
        return
    if built_cc != running_cc:
        raise BackendError(
            f"engine was built for {built_name} (compute capability {built_cc}) but this GPU is "
            f"{gpu.get('name')} (compute capability {running_cc}); rebuild the engine on this device"
        )
    if built_name not in ("?", gpu.get("name")):
        warnings.warn(
            f"engine was built on {built_name}, running on {gpu.get('name')} (same compute capability "
            f"{built_cc}); TensorRT may pick slower kernels — rebuild on this device for best speed",
            stacklevel=3,
        )


class TensorRTSession(Session):
    """A serialized TensorRT (or TensorRT-RTX) engine plus its sidecar JSON.

    Args:
        path: the .engine / .plan file; `<path>.json` is its sidecar.
        memory: "cuda-python" (default) or "pycuda".
        device: CUDA device index.
        module: "tensorrt" | "tensorrt_rtx"; default: the sidecar's builder flavour.
        check_sidecar: compare the sidecar's builder version and GPU with this machine (default True).
            With False a missing sidecar is tolerated (no metadata then).
        dla_core: DLA core to run a DLA engine on (default: the sidecar's options["dla_core"]).
        log_level: TensorRT logger severity ("error" | "warning" | "info" | "verbose").
        lean_runtime: the lean runtime library for a version-compatible engine built with
            exclude_lean_runtime (Runtime.load_runtime).
        plugin: a TensorRT plugin library to load before deserializing, instead of the ones the sidecar names
            (found beside the engine, in $SLAB_EDGE_OPS_DIR or slab_edge/native/lib).
    """

    backend = "tensorrt"

    def __init__(
        self,
        path: str | os.PathLike,
        memory: str = "cuda-python",
        device: int = 0,
        module: str | None = None,
        check_sidecar: bool = True,
        dla_core: int | None = None,
        log_level: str = "warning",
        lean_runtime: str | os.PathLike | None = None,
        plugin: str | os.PathLike | None = None,
        **unknown: Any,
    ):
        super().__init__(path)
        self._memory = None
        self._buffers: dict[str, tuple[Any, Any]] = {}
        self._context = self._engine = self._runtime = None
        if unknown:
            raise InputError(f"unknown TensorRT session option(s): {', '.join(sorted(unknown))}")

        self.sidecar = read_sidecar(self.path)
        if self.sidecar is None and check_sidecar:
            raise BackendError(
                f"{self.path}: no sidecar {sidecar_path(self.path).name} beside the engine; copy it with the "
                "engine (it records the TensorRT version, GPU and preprocessing), or pass check_sidecar=False"
            )
        built_flavour = self.sidecar.builder.get("flavour") if self.sidecar else None
        self.trt, self.flavour = import_tensorrt(module or built_flavour)
        self.backend = self.flavour
        if self.sidecar is not None:
            self.metadata = decode_metadata(self.sidecar.onnx_metadata)
            if check_sidecar:
                check_builder(self.sidecar, self.flavour, self.trt.__version__)
        self.plugin_libraries = self._load_plugins(plugin)

        self._memory = open_memory(memory, device)
        self.gpu = self._memory.gpu()
        if self.sidecar is not None and check_sidecar:
            check_gpu(self.sidecar, self.gpu)

        trt = self.trt
        severity = {
            "error": trt.Logger.ERROR,
            "warning": trt.Logger.WARNING,
            "info": trt.Logger.INFO,
            "verbose": trt.Logger.VERBOSE,
        }[log_level]
        self._logger = trt.Logger(severity)
        self._runtime = trt.Runtime(self._logger)
        options = self.sidecar.options if self.sidecar is not None else {}
        if dla_core is None:
            dla_core = options.get("dla_core")
        if dla_core is not None:
            self._runtime.DLA_core = int(dla_core)  # must be set before deserializing a DLA engine
        if options.get("version_compatible"):
            # A version-compatible plan carries its own lean runtime (host code) that must be allowed to run;
            # built with exclude_lean_runtime, that runtime ships as a separate library to load first.
            self._runtime.engine_host_code_allowed = True
            if options.get("exclude_lean_runtime"):
                if not lean_runtime:
                    raise BackendError(
                        f"{self.path.name} was built version-compatible without its lean runtime: pass "
                        "lean_runtime=<path to libnvinfer_lean.so of the building TensorRT>"
                    )
                self._runtime = self._runtime.load_runtime(str(lean_runtime))
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise BackendError(
                f"{self.path}: TensorRT could not deserialize the engine (corrupt file, built by another "
                f"TensorRT/GPU, or a plugin library it needs is not loaded: --plugin; see the TensorRT log)"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"{self.path}: could not create an execution context (out of device memory?)")
        self._read_io()

    def _load_plugins(self, explicit: str | os.PathLike | None) -> list[str]:
        """Load the plugin libraries the engine needs (before deserializing); returns their paths."""
        entries = self.sidecar.plugins if self.sidecar is not None else []

        def needed(entry) -> tuple[PluginId, ...]:
            try:
                return tuple(PluginId.from_json(p) for p in entry.get("plugins", []))
            except (AttributeError, KeyError, TypeError):
                raise BackendError(
                    f"{sidecar_path(self.path)}: malformed plugins entry {entry!r} (expected library, "
                    "sha256, plugins: [{name, version, namespace}])"
                ) from None

        if explicit:
            load_plugin_library(self.trt, explicit, tuple(i for e in entries for i in needed(e)))
            return [str(explicit)]
        loaded = []
        for entry in entries:
            ids = needed(entry)
            if entry.get("serialized_in_engine") or (ids and all(registered(self.trt, i) for i in ids)):
                continue  # a version-compatible plan carries its library; or this process loaded it already
            name = entry.get("library", "?")
            path = find_plugin_library(name, self.path.parent)
            if path is None:
                wanted = ", ".join(i.describe() for i in ids) or "its plugins"
                raise BackendError(
                    f"{self.path.name} needs the TensorRT plugin library {name} ({wanted}): not found beside "
                    "the engine, in $SLAB_EDGE_OPS_DIR or slab_edge/native/lib; build it on this device "
                    "(python3 -m slab_edge.native.build trt) or pass plugin= / --plugin"
                )
            if entry.get("sha256") and file_sha256(path) != entry["sha256"]:
                warnings.warn(
                    f"plugin library {path} is not the build the engine was made with (sha256 differs); fine "
                    "if it is the same plugin version, otherwise rebuild the engine",
                    stacklevel=3,
                )
            load_plugin_library(self.trt, path, ids)
            loaded.append(str(path))
        return loaded

    def _read_io(self) -> None:
        trt, engine = self.trt, self._engine
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            mode = engine.get_tensor_mode(name)
            trt_dtype = engine.get_tensor_dtype(name)
            try:
                dtype = np.dtype(trt.nptype(trt_dtype))
            except TypeError:
                raise BackendError(f"tensor {name!r} has type {trt_dtype} that numpy cannot hold") from None
            shape = tuple(int(d) if int(d) >= 0 else None for d in engine.get_tensor_shape(name))
            spec = TensorSpec(name, shape, dtype)
            if mode == trt.TensorIOMode.INPUT:
                self.inputs.append(spec)
            elif mode == trt.TensorIOMode.OUTPUT:
                self.outputs.append(spec)

    def profile_range(self, name: str) -> str:
        """'min .. max' of the input's optimization profile 0, for error messages."""
        try:
            low, _, high = self._engine.get_tensor_profile_shape(name, 0)
            return f"{list(low)} .. {list(high)}"
        except Exception:
            return "?"

    def _buffer(self, name: str, nbytes: int):
        device, pinned = self._buffers.get(name, (None, None))
        if device is None or device.nbytes < nbytes:
            # Grow only: a smaller batch reuses the larger allocation.
            for old in (device, pinned):
                if old is not None:
                    old.free()
            device = self._memory.device_buffer(nbytes)
            pinned = self._memory.pinned_buffer(nbytes)
            self._buffers[name] = (device, pinned)
        return device, pinned

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        context, memory = self._context, self._memory
        for spec in self.inputs:
            array = feeds[spec.name]
            if not context.set_input_shape(spec.name, array.shape):
                raise InputError(
                    f"input {spec.name!r}: shape {list(array.shape)} is outside the engine's optimization "
                    f"profile {self.profile_range(spec.name)}; rebuild with a wider profile"
                )
        out_shapes = {}
        for spec in self.outputs:
            shape = tuple(int(d) for d in context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise BackendError(f"output {spec.name!r} has a data-dependent shape {shape}; not supported")
            out_shapes[spec.name] = shape

        for spec in self.inputs:
            array = feeds[spec.name]
            device, pinned = self._buffer(spec.name, array.nbytes)
            np.copyto(pinned.view(array.shape, array.dtype), array)
            memory.copy_to_device(device, pinned, array.nbytes)
        out_bytes = {
            s.name: int(np.prod(out_shapes[s.name], dtype=np.int64)) * s.dtype.itemsize for s in self.outputs
        }
        for spec in self.outputs:
            self._buffer(spec.name, out_bytes[spec.name])
        for spec in self.inputs + self.outputs:
            context.set_tensor_address(spec.name, self._buffers[spec.name][0].ptr)

        if not context.execute_async_v3(memory.stream_handle):
            raise BackendError(f"{self.path.name}: TensorRT execute_async_v3 failed (see the TensorRT log)")
        for spec in self.outputs:
            device, pinned = self._buffers[spec.name]
            memory.copy_to_host(pinned, device, out_bytes[spec.name])
        memory.synchronize()
        # Copy out of the pinned buffers: the next run overwrites them.
        return {
            s.name: self._buffers[s.name][1].view(out_shapes[s.name], s.dtype).copy() for s in self.outputs
        }

    def _close(self) -> None:
        for device, pinned in self._buffers.values():
            device.free()
            pinned.free()
        self._buffers.clear()
        # Context before engine before runtime: TensorRT objects must die in reverse creation order.
        self._context = None
        self._engine = None
        self._runtime = None
        if self._memory is not None:
            memory, self._memory = self._memory, None
            memory.close()
