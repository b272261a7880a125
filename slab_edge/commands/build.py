"""`slab-edge build`: ONNX -> TensorRT / TensorRT-RTX engine plus its sidecar JSON (`<engine>.json`).

    slab-edge build model.fp16.onnx                          # engine beside the ONNX, batch 1..8
    slab-edge build model.onnx --precision fp16 --timing-cache trt.cache --workspace 1024   # TensorRT 10
    slab-edge build model.fp16.onnx --dla-core 0 --gpu-fallback --opt-batch 1             # Jetson DLA
    slab-edge build model.trt.onnx --plugin libslab_trt_plugin.so           # fused SLA plugin, TensorRT 10/11

TensorRT 10 is weakly typed (builder flags pick fp16/int8; the SLA core is pinned to fp32); TensorRT 11
and TensorRT-RTX are strongly typed: build the fp16 / int8 ONNX (`slab-edge export --precision ...`).
"""

from __future__ import annotations

import argparse

from slab_edge.commands.argtypes import int_range, non_negative_int, output_file, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("onnx", help="exported .onnx file")
    parser.add_argument(
        "-o", "--output", type=output_file, help="engine file (default: <onnx stem>.engine beside the ONNX)"
    )
    parser.add_argument("--builder", choices=["tensorrt", "tensorrt_rtx"], default=None,
                        help="default: tensorrt if importable, else tensorrt_rtx")  # fmt: skip
    prec = parser.add_argument_group("precision")
    prec.add_argument("--precision", choices=["auto", "fp32", "fp16", "int8"], default="auto",
                      help="auto = the ONNX file's precision; TensorRT 10 sets builder flags for fp16/int8, "
                      "TensorRT 11 / RTX require it to match the ONNX")  # fmt: skip
    typing = prec.add_mutually_exclusive_group()
    typing.add_argument("--strongly-typed", dest="strongly_typed", action="store_true", default=None,
                        help="TensorRT 10: build a strongly typed network (types from the ONNX)")  # fmt: skip
    typing.add_argument("--weakly-typed", dest="strongly_typed", action="store_false",
                        help="force weak typing (TensorRT 10 only)")  # fmt: skip
    prec.add_argument("--no-sla-fp32", action="store_true",
                      help="TensorRT 10 weak typing: do not pin the SLA-core layers to fp32")  # fmt: skip
    shapes = parser.add_argument_group("shapes: NAME:1x3x224x224 or 1x3x224x224 for a single input")
    shapes.add_argument("--min-shape", action="append", default=[])
    shapes.add_argument("--opt-shape", action="append", default=[])
    shapes.add_argument("--max-shape", action="append", default=[])
    shapes.add_argument(
        "--max-batch", type=positive_int, default=8, help="default profile: batch 1..N (default 8)"
    )
    shapes.add_argument(
        "--opt-batch", type=positive_int, default=1, help="default profile's optimal batch (default 1)"
    )
    cfg = parser.add_argument_group("builder")
    cfg.add_argument(
        "--workspace", type=positive_int, default=None, metavar="MiB", help="workspace memory pool limit"
    )
    cfg.add_argument(
        "--timing-cache",
        type=output_file,
        help="timing cache file: reused if present, written back (TensorRT)",
    )
    cfg.add_argument("--opt-level", type=int_range(0, 5), default=None, help="builder optimization level 0-5")
    cfg.add_argument("--version-compatible", action="store_true", help="engine runs on later TensorRT of the "
                     "same major version (BuilderFlag.VERSION_COMPATIBLE)")  # fmt: skip
    cfg.add_argument("--exclude-lean-runtime", action="store_true",
                     help="with --version-compatible: ship the lean runtime separately")  # fmt: skip
    cfg.add_argument("--hardware-compatibility", choices=["none", "ampere_plus", "same_compute_capability"],
                     default="none")  # fmt: skip
    cfg.add_argument("--compute-capability", nargs="+", default=[], metavar="CC",
                     help="TensorRT-RTX targets, e.g. 8.6 8.9 12.0 (default: the builder's)")  # fmt: skip
    cfg.add_argument("--plugin", metavar="LIB", default=None,
                     help="TensorRT plugin library to load before parsing (default: slab-edge's built "
                     "libslab_trt_plugin.so when the ONNX has SlabLinearAttention nodes); recorded in the "
                     "sidecar for the runtime")  # fmt: skip
    dla = parser.add_argument_group("Jetson DLA (fixed shapes; fp16/int8 only)")
    dla.add_argument("--dla-core", type=non_negative_int, default=None, help="build for this DLA core")
    dla.add_argument("--gpu-fallback", action="store_true", help="run layers DLA cannot on the GPU")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="verbose TensorRT log")


def parse_shapes(mins: list[str], opts: list[str], maxs: list[str]) -> dict | None:
    """{input name ("" = the only input): (min, opt, max)} from NAME:AxBxC strings."""
    from slab_edge.errors import InputError

    def split(items: list[str], label: str) -> dict[str, tuple[int, ...]]:
        out = {}
        for item in items:
            name, _, dims = item.rpartition(":")
            try:
                out[name] = tuple(int(d) for d in dims.lower().split("x"))
            except ValueError:
                raise InputError(
                    f"--{label}-shape {item!r}: expected NAME:1x3x224x224 or 1x3x224x224"
                ) from None
        return out

    lo, opt, hi = split(mins, "min"), split(opts, "opt"), split(maxs, "max")
    names = set(lo) | set(opt) | set(hi)
    if not names:
        return None
    shapes = {}
    for name in names:
        if name not in lo or name not in opt or name not in hi:
            raise InputError(
                f"input {name or '(default)'}: give all of --min-shape, --opt-shape and --max-shape"
            )
        shapes[name] = (lo[name], opt[name], hi[name])
    return shapes


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from slab_edge.export.trt_builder import BuildOptions, build_engine
    from slab_edge.io import check_output, check_outputs_distinct
    from slab_edge.runtime.metadata import sidecar_path

    output = Path(args.output) if args.output else None
    engine = check_output(output or Path(args.onnx).with_suffix(".engine"), label="engine")
    check_outputs_distinct(
        {"engine": engine, "engine sidecar": sidecar_path(engine)},
        {"ONNX input": args.onnx, "--timing-cache": args.timing_cache, "--plugin": args.plugin},
    )
    options = BuildOptions(
        precision=args.precision,
        strongly_typed=args.strongly_typed,
        shapes=parse_shapes(args.min_shape, args.opt_shape, args.max_shape),
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        workspace_mib=args.workspace,
        timing_cache=str(args.timing_cache) if args.timing_cache else None,
        optimization_level=args.opt_level,
        dla_core=args.dla_core,
        gpu_fallback=args.gpu_fallback,
        version_compatible=args.version_compatible,
        exclude_lean_runtime=args.exclude_lean_runtime,
        hardware_compatibility=args.hardware_compatibility,
        compute_capabilities=tuple(args.compute_capability),
        pin_sla_core_fp32=not args.no_sla_fp32,
        builder=args.builder,
        plugin=args.plugin,
        progress=not args.no_progress,
        verbose=args.verbose,
    )
    build_engine(args.onnx, output, options, log=print)
    return 0
