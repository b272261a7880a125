"""ONNX Runtime session: CPU, CUDA or TensorRT execution provider, thread count, optimization level, and the
slab custom-op library for models with fused SLA nodes (slab_edge.runtime.custom_ops)."""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from slab_edge.errors import BackendError, InputError
from slab_edge.runtime.metadata import decode_metadata
from slab_edge.runtime.session import Session, TensorSpec

#: short name -> ONNX Runtime execution provider; each falls back to the ones after it for unsupported ops
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}

#: ONNX Runtime type string -> numpy dtype
ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}

OPT_LEVELS = ("disable", "basic", "extended", "all")

#: ONNX Runtime's load error for an operator its build does not have ("com.microsoft:LinearAttention(-1) is
#: not a registered function/op"): a model for a newer ONNX Runtime (export-lm --ops ort) or a custom op
_UNKNOWN_OP = re.compile(r"([\w.]+):(\w+)\(-?\d+\) is not a registered function/op")


def version_tuple(version: str) -> tuple[int, ...]:
    """(1, 25, 1) for "1.25.1" (and for "1.25.1.dev20260401"): the leading numeric release parts."""
    parts = []
    for piece in version.split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.group() != piece:
            break
    return tuple(parts)


def _missing_op_message(path, ort, text: str) -> str | None:
    """One line for a load failure on an operator this ONNX Runtime lacks, else None."""
    found = _UNKNOWN_OP.search(text)
    if found is None:
        return None
    from slab_edge.runtime.metadata import read_model_metadata

    try:  # the model's own requirement, when the metadata can be read without loading it (onnx installed)
        need = read_model_metadata(path).get("min_onnxruntime")
    except Exception:
        need = None
    needs = f"; the model needs onnxruntime >= {need}" if need else ""
    return (
        f"{path}: ONNX Runtime {ort.__version__} has no operator {found.group(1)}.{found.group(2)}{needs} "
        "(upgrade onnxruntime, or export the model with standard ops)"
    )


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendError(
            f"ONNX Runtime is not installed ({err}); pip install 'slab-edge[onnx]' (or onnxruntime-gpu)"
        ) from None
    return onnxruntime


def resolve_providers(provider: str | list[str] | None, available: list[str]) -> list[str]:
    """Execution-provider list for ONNX Runtime; a provider this build lacks raises BackendError."""
    if provider is None:
        wanted = PROVIDERS["cpu"]
    elif isinstance(provider, str) and provider.lower() in PROVIDERS:
        wanted = PROVIDERS[provider.lower()]
    elif isinstance(provider, str):
        wanted = [provider]
    else:
        wanted = list(provider)
    if wanted[0] not in available:
        raise BackendError(
            f"ONNX Runtime provider {wanted[0]} is not available in this build "
            f"(available: {', '.join(available)}); CUDA/TensorRT need the onnxruntime-gpu package"
        )
    return [p for p in wanted if p in available]


def _spec(node_arg) -> TensorSpec:
    dtype = ORT_DTYPES.get(node_arg.type)
    if dtype is None:
        raise BackendError(f"tensor {node_arg.name!r} has unsupported type {node_arg.type}")
    # ORT reports dynamic dims as None or as their symbolic name (a str).
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in node_arg.shape)
    return TensorSpec(node_arg.name, shape, np.dtype(dtype))


class OnnxRuntimeSession(Session):
    """A `.onnx` model on ONNX Runtime.

    Args:
        path: the .onnx file.
        provider: "cpu" (default) | "cuda" | "tensorrt" | a full provider name | a list of them.
        provider_options: options for the first provider, e.g. {"device_id": 0} or, for TensorRT,
            {"trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": "cache"}.
        threads: intra-op thread count (None = ONNX Runtime's default, one per physical core).
        inter_op_threads: inter-op thread count (None = default).
        graph_optimization: "disable" | "basic" | "extended" | "all" (default "all").
        session_options: a prepared onnxruntime.SessionOptions (threads/graph_optimization then ignored).
        custom_op_library: the slab custom-op library to register (default: the built one, when the model
            holds fused SLA nodes); `self.custom_op_library` says which one the session uses (or None).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike,
        provider: str | list[str] | None = "cpu",
        provider_options: dict[str, Any] | None = None,
        threads: int | None = None,
        inter_op_threads: int | None = None,
        graph_optimization: str = "all",
        session_options: Any = None,
        custom_op_library: str | os.PathLike | None = None,
        **unknown: Any,
    ):
        super().__init__(path)
        if unknown:
            raise InputError(f"unknown ONNX Runtime session option(s): {', '.join(sorted(unknown))}")
        ort = import_onnxruntime()
        providers = resolve_providers(provider, ort.get_available_providers())
        options = session_options or self._session_options(ort, threads, inter_op_threads, graph_optimization)
        from slab_edge.runtime.custom_ops import prepare_session_options

        self.custom_op_library = prepare_session_options(options, self.path, providers, custom_op_library)
        provider_list: list[Any] = list(providers)
        if provider_options:
            provider_list[0] = (providers[0], dict(provider_options))
        try:
            self._session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=provider_list
            )
        except Exception as err:  # ORT raises its own pybind exception types (InvalidProtobuf, Fail, ...)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            missing = _missing_op_message(self.path, ort, str(err))
            if missing:
                raise BackendError(missing) from None
            raise BackendError(
                f"{self.path}: ONNX Runtime cannot load this model (corrupt or truncated file?): {first}"
            ) from None
        active = self._session.get_providers()
        if providers[0] not in active:
            # ORT falls back silently (a warning) when a provider fails to initialise: say so instead.
            raise BackendError(f"{providers[0]} failed to initialise (active providers: {', '.join(active)})")
        self.providers = active
        self.provider_options = self._session.get_provider_options()  # {provider: {key: str}}
        self.inputs = [_spec(a) for a in self._session.get_inputs()]
        self.outputs = [_spec(a) for a in self._session.get_outputs()]
        self.metadata = decode_metadata(dict(self._session.get_modelmeta().custom_metadata_map))
        need = self.metadata.get("min_onnxruntime")
        if need and version_tuple(ort.__version__) < version_tuple(str(need)):
            raise BackendError(
                f"{self.path}: needs onnxruntime >= {need} (ops: {self.metadata.get('ops', '?')}), "
                f"this is {ort.__version__}"
            )

    @staticmethod
    def _session_options(ort, threads, inter_op_threads, graph_optimization):
        options = ort.SessionOptions()
        if threads is not None:
            if int(threads) < 1:
                raise InputError(f"threads must be >= 1, got {threads}")
            options.intra_op_num_threads = int(threads)
        if inter_op_threads is not None:
            options.inter_op_num_threads = int(inter_op_threads)
        if graph_optimization not in OPT_LEVELS:
            raise InputError(f"graph_optimization must be one of {OPT_LEVELS}, got {graph_optimization!r}")
        level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization]
        options.graph_optimization_level = level
        return options

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [s.name for s in self.outputs]
        try:
            values = self._session.run(names, feeds)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BackendError(f"{self.path.name}: ONNX Runtime failed: {first}") from None
        return dict(zip(names, values))

    def _close(self) -> None:
        self._session = None
