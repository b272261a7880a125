"""Backend flags shared by `infer`, `bench` and `compare` (torch-free)."""

from __future__ import annotations

import argparse
from typing import Any

from slab_edge.commands.argtypes import non_negative_int, positive_int
from slab_edge.errors import InputError


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backend")
    group.add_argument("--provider", default="cpu", help="ONNX Runtime: cpu | cuda | tensorrt (default: cpu)")
    group.add_argument(
        "--provider-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="ONNX Runtime execution-provider option, repeatable (e.g. --provider cuda --provider-option "
        "use_tf32=0 for exact fp32 GEMMs; device_id=1)",
    )
    group.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads")
    add_custom_op_library_argument(group)
    group.add_argument(
        "--graph-optimization",
        default="all",
        choices=["disable", "basic", "extended", "all"],
        help="ONNX Runtime graph optimization level (default: all)",
    )
    group.add_argument(
        "--memory", default="cuda-python", choices=["cuda-python", "pycuda"], help="TensorRT device memory"
    )
    group.add_argument("--device", type=non_negative_int, default=0, help="CUDA device index (TensorRT)")
    group.add_argument(
        "--dla-core",
        type=non_negative_int,
        default=None,
        help="TensorRT DLA engine: core to run on (default: sidecar)",
    )
    group.add_argument(
        "--plugin",
        metavar="LIB",
        default=None,
        help="TensorRT plugin library to load before deserializing (default: the one the sidecar names)",
    )


def add_custom_op_library_argument(parser) -> None:
    parser.add_argument(
        "--custom-op-library",
        metavar="PATH",
        help="ONNX Runtime: the slab custom-op library for models with fused SLA nodes (default: the built "
        "one, from slab-edge build-ops)",
    )


def parse_provider_options(items: list[str]) -> dict[str, str]:
    """["use_tf32=0", ...] -> {"use_tf32": "0"} (ONNX Runtime takes provider option values as strings)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--provider-option must be KEY=VALUE, got {item!r}")
        options[key.strip()] = value.strip()
    return options


def backend_inputs(args: argparse.Namespace, models: list[str]) -> list[tuple[str, Any]]:
    """(label, path) of every file the backend flags and `models` read: models, engine sidecars, libraries."""
    from slab_edge.runtime.metadata import sidecar_path

    inputs: list[tuple[str, Any]] = []
    for model in models:
        inputs.append(("model", model))
        if not str(model).lower().endswith(".onnx"):
            inputs.append(("engine sidecar", sidecar_path(model)))
    return [*inputs, ("--custom-op-library", args.custom_op_library), ("--plugin", args.plugin)]


def session_options(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """`load()` options for `model` from the shared flags (ONNX Runtime vs TensorRT)."""
    from slab_edge.runtime.loader import backend_for

    if backend_for(model) == "onnxruntime":
        options = {
            "provider": args.provider,
            "threads": args.threads,
            "graph_optimization": args.graph_optimization,
            "custom_op_library": args.custom_op_library,
        }
        provider_options = parse_provider_options(args.provider_option)
        if provider_options:
            options["provider_options"] = provider_options
        return options
    return {"memory": args.memory, "device": args.device, "dla_core": args.dla_core, "plugin": args.plugin}
