"""Write the sidecar JSON of an engine built outside slab-edge (trtexec), on the device that built it.

    trtexec --onnx=model.onnx --saveEngine=model.engine --fp16 ...
    python3 -m slab_edge.runtime.sidecar model.engine --onnx model.onnx --precision fp16
    # an engine with plugin layers (trtexec --dynamicPlugins=LIB): name the library, it is loaded first
    python3 -m slab_edge.runtime.sidecar model.engine --onnx model.onnx --precision fp16 --plugin LIB

The sidecar records what `load()` checks (TensorRT flavour + version, GPU compute capability) and what it
needs (the ONNX file's preprocessing metadata and labels), so it must be written where the engine was
built: it reads the running TensorRT and GPU, and deserializes the engine once to read its optimization
profiles (which also proves the engine loads here). `slab-edge build` writes the same file itself.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from slab_edge.errors import BackendError, InputError, SlabEdgeError
from slab_edge.io import atomic_write_json
from slab_edge.runtime.cuda_memory import open_memory
from slab_edge.runtime.metadata import PREFIX, EngineSidecar, read_metadata_props, sidecar_path
from slab_edge.runtime.tensorrt_plugins import describe_plugin_library, load_plugin_library
from slab_edge.runtime.tensorrt_session import import_tensorrt


def engine_profiles(trt, engine) -> list[dict[str, dict[str, list[int]]]]:
    """[{input name: {"min", "opt", "max"}}] for every optimization profile of a deserialized engine."""
    inputs = [
        engine.get_tensor_name(i)
        for i in range(engine.num_io_tensors)
        if engine.get_tensor_mode(engine.get_tensor_name(i)) == trt.TensorIOMode.INPUT
    ]
    profiles = []
    for index in range(getattr(engine, "num_optimization_profiles", 1)):
        profile = {}
        for name in inputs:
            low, opt, high = engine.get_tensor_profile_shape(name, index)
            profile[name] = {"min": list(low), "opt": list(opt), "max": list(high)}
        profiles.append(profile)
    return profiles


def write_sidecar(
    engine_path: str | os.PathLike,
    onnx_path: str | os.PathLike,
    precision: str,
    module: str | None = None,
    dla_core: int | None = None,
    version_compatible: bool = False,
    memory: str = "cuda-python",
    device: int = 0,
    plugin: str | os.PathLike | None = None,
) -> Path:
    """Describe `engine_path` (built from `onnx_path` on this machine) in `<engine>.json`; returns its path.

    `plugin`: the plugin library the engine's plugin layers come from (loaded before deserializing, recorded
    in the sidecar so the runtime loads it too).

    Raises:
        InputError: missing files. BackendError: TensorRT/CUDA missing, a bad plugin library, or the engine
            does not deserialize.
    """
    engine_path, onnx_path = Path(engine_path), Path(onnx_path)
    for path in (engine_path, onnx_path):
        if not path.is_file():
            raise InputError(f"file not found: {path}")
    metadata_props = _slab_edge_props(onnx_path)
    trt, flavour = import_tensorrt(module)
    if plugin is not None:
        load_plugin_library(trt, plugin)
    cuda = open_memory(memory, device)
    try:
        gpu = cuda.gpu()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        if dla_core is not None:
            runtime.DLA_core = int(dla_core)
        if version_compatible:
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise BackendError(f"{engine_path}: this TensorRT cannot deserialize it (built elsewhere?)")
        profiles = engine_profiles(trt, engine)
        del engine, runtime
    finally:
        cuda.close()
    sidecar = EngineSidecar(
        builder={"flavour": flavour, "version": trt.__version__},
        gpu=gpu if flavour == "tensorrt" else {"name": gpu["name"], "compute_capability": "none"},
        precision=precision,
        profiles=profiles,
        onnx_metadata=metadata_props,
        options={
            "dla_core": dla_core,
            "device": "DLA" if dla_core is not None else "GPU",
            "version_compatible": version_compatible,
            "written_by": "slab_edge.runtime.sidecar (engine built outside slab-edge)",
        },
        onnx_file=onnx_path.name,
        onnx_sha256=hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        plugins=[describe_plugin_library(plugin, (), False)] if plugin is not None else [],
    )
    target = sidecar_path(engine_path)
    atomic_write_json(target, sidecar.to_json())
    return target


def _slab_edge_props(onnx_path: Path) -> dict[str, str]:
    """The ONNX file's slab_edge.* metadata_props, verbatim."""
    try:
        props = read_metadata_props(onnx_path)
    except ImportError:
        raise BackendError(
            "reading ONNX metadata needs onnx or onnxruntime: pip install onnxruntime"
        ) from None
    except Exception as err:  # onnx / ORT parse errors
        raise InputError(f"{onnx_path}: cannot read ONNX metadata ({err})") from None
    return {k: v for k, v in props.items() if k.startswith(PREFIX)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m slab_edge.runtime.sidecar", description=__doc__.splitlines()[0]
    )
    parser.add_argument("engine", help="serialized engine (from trtexec --saveEngine)")
    parser.add_argument("--onnx", required=True, help="the ONNX file the engine was built from")
    parser.add_argument("--precision", required=True, choices=["fp32", "fp16", "int8", "strongly-typed"])
    parser.add_argument("--module", choices=["tensorrt", "tensorrt_rtx"], default=None)
    parser.add_argument("--dla-core", type=int, default=None, help="the engine was built for this DLA core")
    parser.add_argument("--version-compatible", action="store_true", help="built with --versionCompatible")
    parser.add_argument("--memory", choices=["cuda-python", "pycuda"], default="cuda-python")
    parser.add_argument("--plugin", metavar="LIB", default=None,
                        help="plugin library the engine needs (trtexec --dynamicPlugins=LIB)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        path = write_sidecar(args.engine, args.onnx, args.precision, args.module, args.dla_core,
                             args.version_compatible, args.memory, plugin=args.plugin)  # fmt: skip
    except (SlabEdgeError, OSError) as err:
        print(f"sidecar: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
