"""ONNX -> serialized TensorRT / TensorRT-RTX engine plus its sidecar JSON.

Three builder families share one API (`Builder`, `OnnxParser`, `IBuilderConfig`) but differ in typing:
    TensorRT 10.x   weakly typed by default: precision from builder flags (FP16, INT8); the SLA core's
                    layers are pinned to fp32 with precision constraints. Strongly typed on request.
                    JetPack 6 ships 10.3.
    TensorRT 11.x   strongly typed only (no precision flags): precision comes from the ONNX types, so build
                    the fp16 / int8 ONNX variants for reduced precision.
    TensorRT-RTX    (`tensorrt_rtx`) strongly typed only; builds on CPU-only machines; no DLA; timing
                    caches are no-ops; targets chosen by compute capability.
Decisions (`plan_build`, `plan_plugin`) are unit-tested with a fake `trt` module; `apply_plan` makes the API
calls, each version-dependent attribute guarded with a message naming it.

Custom ops: an ONNX file exported with `--custom-ops trt` (or `ort`) has SlabLinearAttention nodes; TensorRT
10/11 map them to the plugin in `libslab_trt_plugin.so` (slab_edge/native), loaded into the plugin registry
before the parser runs (`--plugin LIB`, default: the built library) and recorded in the sidecar, so the
runtime loads it too. Nodes that carry a function body (the `ort` export) build from that body when no plugin
is loaded. TensorRT-RTX has no plugin support (a build with a plugin layer aborts): it refuses `--plugin` and
body-less custom nodes before building.

Writes `<engine>` and `<engine>.json` (EngineSidecar) atomically; nothing is written if the build fails.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slab_edge import native
from slab_edge.errors import BackendError, InputError
from slab_edge.export.graph import SLA_CORE_TAG
from slab_edge.io import atomic_path
from slab_edge.runtime.tensorrt_plugins import (
    SLA_PLUGIN,
    PluginId,
    describe_plugin_library,
    load_plugin_library,
)

FLAVOURS = ("tensorrt", "tensorrt_rtx")
BUILD_PRECISIONS = ("auto", "fp32", "fp16", "int8")
HARDWARE_LEVELS = {
    "none": "NONE",
    "ampere_plus": "AMPERE_PLUS",
    "same_compute_capability": "SAME_COMPUTE_CAPABILITY",
}
#: compute capability string -> tensorrt_rtx.ComputeCapability member
RTX_TARGETS = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120", "12.1": "SM121"}


@dataclass
class BuildOptions:
    """What the user asks for (CLI flags map one to one).

    shapes: {input name: (min, opt, max)} explicit profile; default: the ONNX shape with batch
        1..max_batch (opt = opt_batch). DLA forces fixed shapes (min = opt = max, batch = opt_batch).
    precision: "auto" = the ONNX file's precision. TensorRT 10: fp16 / int8 set builder flags.
        TensorRT 11 / RTX: must equal the ONNX precision (strongly typed).
    strongly_typed: None = auto (TensorRT 11 / RTX always; TensorRT 10 only when asked).
    """

    precision: str = "auto"
    strongly_typed: bool | None = None
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] | None = None
    max_batch: int = 8
    opt_batch: int = 1
    workspace_mib: int | None = None
    timing_cache: str | None = None
    optimization_level: int | None = None
    dla_core: int | None = None
    gpu_fallback: bool = False
    version_compatible: bool = False
    exclude_lean_runtime: bool = False
    hardware_compatibility: str = "none"
    compute_capabilities: tuple[str, ...] = ()
    pin_sla_core_fp32: bool = True
    builder: str | None = None
    plugin: str | None = None  #: TensorRT plugin library; default: the built one when the ONNX needs it
    progress: bool = True
    verbose: bool = False


@dataclass
class BuildPlan:
    """The decisions `plan_build` takes; `apply_plan` turns them into API calls."""

    flavour: str
    version: str
    strongly_typed: bool
    precision: str  #: what the engine computes in: fp32 | fp16 | int8
    flags: list[str] = field(default_factory=list)  #: BuilderFlag member names
    pin_sla_core_fp32: bool = False
    device: str = "GPU"
    dla_core: int | None = None
    fixed_shapes: bool = False
    use_timing_cache: bool = True
    plugin: str | None = None  #: plugin library loaded before parsing
    plugin_ids: tuple[PluginId, ...] = ()  #: the plugins the network is known to need from it
    serialize_plugin: bool = False  #: the library goes into the (version-compatible) plan
    notes: list[str] = field(default_factory=list)


@dataclass
class BuildReport:
    engine: Path
    sidecar: Path
    seconds: float
    engine_bytes: int
    plan: BuildPlan
    sidecar_data: dict[str, Any]


# -- backend detection ------------------------------------------------------------------------------------
def import_builder(flavour: str | None = None):
    """(module, flavour, version) for `tensorrt` or `tensorrt_rtx`; None tries tensorrt first.

    Raises:
        BackendError: neither importable (message says how to install).
    """
    if flavour is not None and flavour not in FLAVOURS:
        raise InputError(f"unknown builder {flavour!r}; choose one of {', '.join(FLAVOURS)}")
    problems = []
    for name in [flavour] if flavour else list(FLAVOURS):
        try:
            module = importlib.import_module(name)
        except Exception as err:  # ImportError, or OSError from a stub wheel missing its libraries
            problems.append(
                f"{name}: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}"
            )
            continue
        return module, name, str(getattr(module, "__version__", "0"))
    raise BackendError(
        "no TensorRT builder importable (" + "; ".join(problems) + "): on Jetson TensorRT comes with JetPack "
        "(python3-libnvinfer); on x86 pip install tensorrt, or tensorrt-rtx-cu13 for TensorRT-RTX"
    )


def major_version(version: str) -> int:
    digits = "".join(ch for ch in str(version).split(".")[0] if ch.isdigit())
    return int(digits) if digits else 0


def strongly_typed_only(flavour: str, version: str) -> bool:
    """TensorRT 11+ and TensorRT-RTX build only strongly typed networks."""
    return flavour == "tensorrt_rtx" or major_version(version) >= 11


# -- pure decisions ---------------------------------------------------------------------------------------
def plan_build(flavour: str, version: str, onnx_precision: str, options: BuildOptions) -> BuildPlan:
    """Decide typing, precision flags, device and shape policy. Pure; raises InputError on impossible asks."""
    if options.precision not in BUILD_PRECISIONS:
        raise InputError(
            f"unknown precision {options.precision!r}; choose from {', '.join(BUILD_PRECISIONS)}"
        )
    if options.hardware_compatibility not in HARDWARE_LEVELS:
        raise InputError(
            f"unknown hardware compatibility {options.hardware_compatibility!r}; "
            f"one of {', '.join(HARDWARE_LEVELS)}"
        )
    if options.exclude_lean_runtime and not options.version_compatible:
        raise InputError(
            "--exclude-lean-runtime only applies to version-compatible engines (--version-compatible)"
        )
    onnx_precision = onnx_precision or "fp32"
    name = "TensorRT-RTX" if flavour == "tensorrt_rtx" else f"TensorRT {version}"
    dla = options.dla_core is not None
    plan = BuildPlan(flavour=flavour, version=version, strongly_typed=False, precision=onnx_precision)

    if strongly_typed_only(flavour, version):
        plan.strongly_typed = True
        if options.strongly_typed is False:
            raise InputError(f"{name} builds strongly typed networks only; drop --weakly-typed")
        if options.precision not in ("auto", onnx_precision):
            raise InputError(
                f"{name} is strongly typed: precision comes from the ONNX, and this file is "
                f"{onnx_precision}; "
                f"export the {options.precision} variant (slab-edge export --precision {options.precision}) "
                "and build that file"
            )
        if dla and flavour == "tensorrt_rtx":
            raise InputError("TensorRT-RTX has no DLA support (DLA is on Jetson, with TensorRT)")
        if dla and onnx_precision == "fp32":
            raise InputError("DLA runs fp16/int8 only: build the fp16 or int8 ONNX variant for DLA")
    elif options.strongly_typed:
        plan.strongly_typed = True
        if options.precision not in ("auto", onnx_precision):
            raise InputError(
                f"strongly typed builds take the precision from the ONNX ({onnx_precision}); "
                "drop --precision or --strongly-typed"
            )
    else:
        precision = onnx_precision if options.precision == "auto" else options.precision
        if precision == "int8" and onnx_precision != "int8":
            raise InputError(
                "INT8 needs a quantized (QDQ) ONNX: export it with `slab-edge export --precision int8 "
                "--calib-data FOLDER` (TensorRT's implicit INT8 calibration is deprecated)"
            )
        if dla and precision == "fp32":
            if options.precision == "fp32":
                raise InputError("DLA runs fp16/int8 only: use --precision fp16 (or int8) with --dla-core")
            precision = "fp16"
            plan.notes.append("DLA runs fp16/int8 only: building fp16")
        plan.precision = precision
        if precision == "fp16":
            plan.flags.append("FP16")
        elif precision == "int8":
            plan.flags += ["INT8", "FP16"]  # QDQ layers in int8, the rest may use fp16
        if precision != "fp32" and options.pin_sla_core_fp32:
            plan.pin_sla_core_fp32 = True
            plan.flags.append("OBEY_PRECISION_CONSTRAINTS")

    if dla:
        plan.device = "DLA"
        plan.dla_core = int(options.dla_core)
        plan.fixed_shapes = True
        if options.gpu_fallback:
            plan.flags.append("GPU_FALLBACK")
    elif options.gpu_fallback:
        plan.notes.append("--gpu-fallback only matters with --dla-core: ignored")
    if options.version_compatible:
        plan.flags.append("VERSION_COMPATIBLE")
        if options.exclude_lean_runtime:
            plan.flags.append("EXCLUDE_LEAN_RUNTIME")
    if flavour == "tensorrt_rtx":
        plan.use_timing_cache = False
        if options.timing_cache:
            plan.notes.append(
                "TensorRT-RTX ignores timing caches (no-ops since RTX 1.2): --timing-cache skipped"
            )
    elif options.compute_capabilities:
        raise InputError(
            "--compute-capability selects TensorRT-RTX targets; TensorRT builds for the GPU it runs on"
        )
    return plan


def default_profile(
    name: str, shape: tuple[int, ...], options: BuildOptions, fixed: bool
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) for one network input: explicit shapes, else batch 1..max_batch (opt = opt_batch).

    Raises:
        InputError: dynamic dimensions other than the batch without explicit shapes, bad batch bounds.
    """
    if options.shapes and name in options.shapes:
        lo, opt, hi = (tuple(int(d) for d in s) for s in options.shapes[name])
        for label, s in (("min", lo), ("opt", opt), ("max", hi)):
            if len(s) != len(shape) or any(d >= 0 and d != got for d, got in zip(shape, s)):
                raise InputError(
                    f"--{label}-shape {'x'.join(map(str, s))} does not fit input {name} {list(shape)}"
                )
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise InputError(f"input {name}: need min <= opt <= max in every dimension")
        if fixed and not (lo == opt == hi):
            raise InputError(f"DLA needs fixed shapes: give equal --min/--opt/--max shapes for {name}")
        return lo, opt, hi
    if any(d < 0 for d in shape[1:]):
        raise InputError(
            f"input {name} {list(shape)} has dynamic dimensions besides the batch: give --min-shape, "
            "--opt-shape and --max-shape"
        )
    if not 1 <= options.opt_batch <= options.max_batch:
        raise InputError(f"need 1 <= --opt-batch ({options.opt_batch}) <= --max-batch ({options.max_batch})")
    if shape and shape[0] >= 0:
        return tuple(shape), tuple(shape), tuple(shape)
    rest = tuple(shape[1:])
    opt = (options.opt_batch, *rest)
    if fixed:
        return opt, opt, opt
    return (1, *rest), opt, (options.max_batch, *rest)


# -- environment ------------------------------------------------------------------------------------------
def gpu_info() -> dict[str, str]:
    """{"name", "compute_capability"} of CUDA device 0 via cuda-python; "none" without a usable GPU."""
    none = {"name": "none", "compute_capability": "none"}
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6 layout
    except Exception:
        return none
    try:
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or not count:
            return none
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) != 0:
            return none
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return {"name": name.rstrip("\x00").strip(), "compute_capability": f"{props.major}.{props.minor}"}
    except Exception:  # driver or library trouble: the sidecar just says "none"
        return none


@dataclass
class OnnxInfo:
    path: Path
    data: bytes
    sha256: str
    metadata: dict[str, str]  #: metadata_props verbatim
    precision: str
    custom_nodes: int | None = None  #: SlabLinearAttention nodes in the graph (None: onnx not installed)
    custom_bodies: bool = False  #: the file carries a function body for them (the `ort` custom-op export)


def read_onnx(path: str | os.PathLike) -> OnnxInfo:
    """Bytes, sha256 and metadata of an ONNX file; a truncated or corrupt file raises InputError."""
    from slab_edge.runtime.metadata import decode_metadata

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    data = path.read_bytes()
    if not data:
        raise InputError(f"{path} is empty")
    metadata: dict[str, str] = {}
    try:
        import onnx
    except ImportError:  # minimal device installs: the TensorRT parser is then the only check
        onnx = None
    if onnx is not None:
        try:
            model = onnx.load_model_from_string(data)
            onnx.checker.check_model(model)
        except Exception as err:  # DecodeError for truncation, ValidationError for dangling parts
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"{path} is not a valid ONNX model (truncated or corrupt?): {first}") from None
        if not model.graph.input:
            raise InputError(f"{path} is not a valid ONNX model (no graph inputs; truncated?)")
        metadata = {p.key: p.value for p in model.metadata_props}
    precision = str(decode_metadata(metadata).get("precision") or "fp32")
    info = OnnxInfo(path, data, hashlib.sha256(data).hexdigest(), metadata, precision)
    if onnx is not None:
        info.custom_nodes = sum(_is_sla_op(n.domain, n.op_type) for n in model.graph.node)
        info.custom_bodies = any(_is_sla_op(f.domain, f.name) for f in model.functions)
    return info


def _is_sla_op(domain: str, op_type: str) -> bool:
    return domain == native.OP_DOMAIN and op_type == native.OP_TYPE


def plan_plugin(plan: BuildPlan, onnx: OnnxInfo, options: BuildOptions) -> None:
    """Decide which plugin library to load (plan.plugin) and whether it goes into the plan; notes the choice.

    Raises:
        InputError: TensorRT-RTX with --plugin or with body-less SlabLinearAttention nodes; a TensorRT older
            than 10 (the plugin is an IPluginV3 plugin); body-less nodes and no plugin library built.
    """
    nodes = onnx.custom_nodes
    what = f"{onnx.path.name} has {nodes} {native.OP_TYPE} node{'s' if nodes != 1 else ''}"
    if plan.flavour == "tensorrt_rtx":
        if options.plugin:
            raise InputError(
                "--plugin: TensorRT-RTX has no plugin support (a build with a plugin layer aborts); build "
                "with TensorRT 10/11, or build the standard export (--custom-ops none) with TensorRT-RTX"
            )
        if nodes and not onnx.custom_bodies:
            raise InputError(
                f"{what} without function bodies (the --custom-ops trt export), and TensorRT-RTX has no "
                "plugin support (a build with a plugin layer aborts): export with --custom-ops none or ort"
            )
        if nodes:
            plan.notes.append(f"{what}: TensorRT-RTX builds them from their function bodies (standard ops)")
        return
    library = options.plugin
    if library is None and nodes:
        found = native.find_library("trt")
        if found is not None:
            library = str(found)
        elif onnx.custom_bodies:
            plan.notes.append(
                f"{what} but no TensorRT plugin library is built: they build from their function bodies "
                "(standard ops; python3 -m slab_edge.native.build trt builds the fused kernel's plugin)"
            )
        else:
            raise InputError(
                f"{what} without function bodies, which only the TensorRT plugin runs: build it "
                "(python3 -m slab_edge.native.build trt) or pass --plugin LIB"
            )
    if library is None:
        return
    if major_version(plan.version) < 10:
        raise InputError(f"the plugin is an IPluginV3 plugin: it needs TensorRT >= 10 (not {plan.version})")
    plan.plugin = str(library)
    plan.plugin_ids = (SLA_PLUGIN,) if nodes else ()
    plan.notes.append(f"plugin library {plan.plugin}")
    if nodes == 0:
        plan.notes.append(f"the ONNX has no {native.OP_TYPE} nodes: --plugin loaded for the plugins it holds")
    if options.version_compatible:
        # A version-compatible plan runs on a later TensorRT, which must not need this process's registry: the
        # library goes into the plan (IBuilderConfig.plugins_to_serialize) and runs as engine host code.
        plan.serialize_plugin = True
        plan.notes.append("version-compatible engine: the plugin library is serialized into the plan")


# -- progress ---------------------------------------------------------------------------------------------
def make_progress_monitor(trt, stream=None):
    """An IProgressMonitor subclass instance rendering the builder's phase tree as one status line.

    `cancel()` makes the next step_complete return False, which stops the build cleanly (Ctrl-C).
    """
    stream = stream or sys.stderr
    base = trt.IProgressMonitor

    class ProgressBar(base):
        def __init__(self):
            base.__init__(self)
            self.phases: dict[str, list] = {}  # name -> [step, total, parent]
            self.cancelled = False
            self.lock = threading.Lock()
            self.tty = hasattr(stream, "isatty") and stream.isatty()
            self.width = 0

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self.lock:
                self.phases[phase_name] = [0, int(num_steps), parent_phase]
                if not self.tty and parent_phase is None:
                    stream.write(f"[build] {phase_name} ({num_steps} steps)\n")
                self._render()

        def step_complete(self, phase_name, step):
            with self.lock:
                if phase_name in self.phases:
                    self.phases[phase_name][0] = int(step) + 1
                self._render()
            return not self.cancelled

        def phase_finish(self, phase_name):
            with self.lock:
                self.phases.pop(phase_name, None)
                if not self.phases and self.tty:
                    stream.write("\r" + " " * self.width + "\r")
                    stream.flush()
                else:
                    self._render()

        def cancel(self):
            self.cancelled = True

        def _render(self):
            if not self.tty or not self.phases:
                return
            parts = [f"{name} {step}/{total}" for name, (step, total, _) in self.phases.items()]
            line = "[build] " + " > ".join(parts)
            line = line[:118]
            stream.write("\r" + line.ljust(self.width))
            stream.flush()
            self.width = len(line)

    return ProgressBar()


# -- API calls --------------------------------------------------------------------------------------------
def _enum(trt, enum_name: str, member: str, why: str, plan: BuildPlan):
    holder = getattr(trt, enum_name, None)
    value = getattr(holder, member, None) if holder is not None else None
    if value is None:
        raise BackendError(f"{plan.flavour} {plan.version} has no {enum_name}.{member} ({why})")
    return value


def _require(obj, attr: str, why: str, plan: BuildPlan):
    if not hasattr(obj, attr):
        raise BackendError(f"{plan.flavour} {plan.version} has no {type(obj).__name__}.{attr} ({why})")


def network_flags(trt, plan: BuildPlan) -> int:
    """Bit mask for builder.create_network: STRONGLY_TYPED when the plan says so (and the enum has it);
    EXPLICIT_BATCH before TensorRT 10 (the ONNX parser needs it there; 10+ ignores it)."""
    holder = getattr(trt, "NetworkDefinitionCreationFlag", None)
    explicit = getattr(holder, "EXPLICIT_BATCH", None) if holder is not None else None
    base = 1 << int(explicit) if explicit is not None and major_version(plan.version) < 10 else 0
    if not plan.strongly_typed:
        return base
    member = getattr(holder, "STRONGLY_TYPED", None) if holder is not None else None
    if member is None:
        if strongly_typed_only(plan.flavour, plan.version):
            return 0  # strongly typed is the only mode: nothing to ask for
        raise BackendError(
            f"{plan.flavour} {plan.version} has no NetworkDefinitionCreationFlag.STRONGLY_TYPED"
        )
    return 1 << int(member)


def network_inputs(network) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (network.get_input(i).name, tuple(int(d) for d in network.get_input(i).shape))
        for i in range(network.num_inputs)
    ]


def pin_sla_core_layers(trt, network) -> int:
    """TensorRT 10 weak typing: run every SLA-core layer (ONNX node names carry `sla_core`) in fp32."""
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if SLA_CORE_TAG not in layer.name:
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def apply_plan(trt, builder, network, config, plan: BuildPlan, options: BuildOptions) -> list[dict]:
    """Configure `config` (flags, memory, device, profiles, optimization level). Returns the profiles."""
    for flag in plan.flags:
        config.set_flag(_enum(trt, "BuilderFlag", flag, f"needed for {flag.lower()}", plan))
    if plan.serialize_plugin:
        _require(config, "plugins_to_serialize", "a version-compatible engine with a plugin", plan)
        config.plugins_to_serialize = [plan.plugin]
    if plan.pin_sla_core_fp32:
        pinned = pin_sla_core_layers(trt, network)
        plan.notes.append(f"{pinned} SLA-core layers pinned to fp32")
    if options.workspace_mib:
        _require(config, "set_memory_pool_limit", "workspace limit", plan)
        pool = _enum(trt, "MemoryPoolType", "WORKSPACE", "workspace limit", plan)
        config.set_memory_pool_limit(pool, int(options.workspace_mib) << 20)
    if options.optimization_level is not None:
        _require(config, "builder_optimization_level", "--opt-level needs TensorRT >= 8.6", plan)
        config.builder_optimization_level = int(options.optimization_level)
    if options.hardware_compatibility != "none":
        _require(
            config, "hardware_compatibility_level", "--hardware-compatibility needs TensorRT >= 8.6", plan
        )
        level = HARDWARE_LEVELS[options.hardware_compatibility]
        config.hardware_compatibility_level = _enum(trt, "HardwareCompatibilityLevel", level, "", plan)
    if options.compute_capabilities:
        _require(config, "set_compute_capability", "compute-capability targets", plan)
        targets = []
        for cc in options.compute_capabilities:
            if cc not in RTX_TARGETS:
                raise InputError(
                    f"unknown compute capability {cc!r}; TensorRT-RTX targets {', '.join(RTX_TARGETS)}"
                )
            targets.append(
                _enum(trt, "ComputeCapability", RTX_TARGETS[cc], "compute-capability target", plan)
            )
        config.num_compute_capabilities = len(targets)
        for index, target in enumerate(targets):
            config.set_compute_capability(target, index)
    if plan.device == "DLA":
        cores = int(getattr(builder, "num_DLA_cores", 0) or 0)
        if plan.dla_core >= cores:
            raise InputError(f"--dla-core {plan.dla_core}: this device has {cores} DLA core(s)")
        config.default_device_type = _enum(trt, "DeviceType", "DLA", "DLA builds", plan)
        config.DLA_core = plan.dla_core
        if not options.gpu_fallback and hasattr(config, "can_run_on_DLA"):
            refused = [
                network.get_layer(i).name
                for i in range(network.num_layers)
                if not config.can_run_on_DLA(network.get_layer(i))
            ]
            if refused:
                raise InputError(
                    f"{len(refused)} layers cannot run on DLA (e.g. {', '.join(refused[:3])}); "
                    "add --gpu-fallback to run them on the GPU"
                )
    profiles = []
    inputs = network_inputs(network)
    if options.shapes and "" in options.shapes:  # unnamed shapes: the one and only input
        if len(inputs) != 1:
            names = ", ".join(n for n, _ in inputs)
            raise InputError(
                f"the network has several inputs ({names}): name them, e.g. --opt-shape NAME:1x3x224x224"
            )
        options.shapes = {inputs[0][0]: options.shapes[""], **{k: v for k, v in options.shapes.items() if k}}
    dynamic = any(d < 0 for _, shape in inputs for d in shape)
    profile = builder.create_optimization_profile() if dynamic else None
    entry = {}
    for name, shape in inputs:
        lo, opt, hi = default_profile(name, shape, options, plan.fixed_shapes)
        entry[name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
        if profile is not None:
            profile.set_shape(name, lo, opt, hi)
    if profile is not None:
        config.add_optimization_profile(profile)
    profiles.append(entry)
    return profiles


def _parse(trt, network, logger, onnx: OnnxInfo, plan: BuildPlan):
    parser = trt.OnnxParser(network, logger)
    ok = (
        parser.parse_from_file(str(onnx.path))
        if hasattr(parser, "parse_from_file")
        else parser.parse(onnx.data)
    )
    if not ok:
        errors = []
        for i in range(int(getattr(parser, "num_errors", 0))):
            err = parser.get_error(i)
            where = ""
            node_name = err.node_name() if hasattr(err, "node_name") else ""
            op = err.node_operator() if hasattr(err, "node_operator") else ""
            if node_name or op:
                where = f"node {node_name} ({op}): "
            desc = str(err.desc()).strip().splitlines()
            hint = ""
            if op == native.OP_TYPE and not plan.plugin:
                hint = " (the SlabLinearAttention plugin is not loaded: pass --plugin LIB)"
            errors.append(where + (desc[0] if desc else "?") + hint)
        detail = errors[0] if errors else "no error details"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BackendError(
            f"{plan.flavour} {plan.version} ONNX parser rejected {onnx.path.name}: {detail}{more}"
        )
    return parser


def _load_timing_cache(config, path: Path | None, plan: BuildPlan):
    if path is None or not plan.use_timing_cache:
        return None
    _require(config, "create_timing_cache", "timing cache", plan)
    data = path.read_bytes() if path.is_file() else b""
    try:
        cache = config.create_timing_cache(data)
    except Exception:  # a corrupt or foreign cache file: TensorRT raises its own error type
        plan.notes.append(f"timing cache {path} is unreadable: starting a fresh one")
        data, cache = b"", config.create_timing_cache(b"")
    if not config.set_timing_cache(cache, False):
        plan.notes.append(f"timing cache {path} does not match this TensorRT/GPU: starting a fresh one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, True)
    else:
        plan.notes.append(f"timing cache {path}: {'reused' if data else 'new'}")
    return cache


def _engine_bytes(serialized) -> bytes:
    if isinstance(serialized, (bytes, bytearray)):
        return bytes(serialized)
    return bytes(memoryview(serialized))


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike | None = None,
    options: BuildOptions | None = None,
    trt_module=None,
    log=None,
) -> BuildReport:
    """Build a serialized engine from an ONNX file and write it with its sidecar JSON (atomically).

    Args:
        onnx_path: the exported model (its slab_edge metadata is copied verbatim into the sidecar).
        engine_path: output; default `<onnx stem>.engine` beside the ONNX.
        options: see BuildOptions.
        trt_module: a `tensorrt`-API module to use instead of importing one (tests pass a fake).
        log: callable(str) for progress lines.

    Raises:
        InputError (bad file, impossible options), BackendError (no builder, parser/builder failure).
    """
    from slab_edge.io import atomic_write_bytes
    from slab_edge.runtime.metadata import EngineSidecar, sidecar_path

    options = options or BuildOptions()
    say = log or (lambda _msg: None)
    onnx = read_onnx(onnx_path)
    engine_path = Path(engine_path) if engine_path else onnx.path.with_suffix(".engine")
    if engine_path.resolve() == onnx.path.resolve():
        raise InputError("engine path must differ from the ONNX path")
    if trt_module is None:
        trt, flavour, version = import_builder(options.builder)
    else:
        trt = trt_module
        flavour = getattr(trt, "__name__", "tensorrt").split(".")[0]
        flavour = flavour if flavour in FLAVOURS else "tensorrt"
        version = str(getattr(trt, "__version__", "0"))
    plan = plan_build(flavour, version, onnx.precision, options)
    plan_plugin(plan, onnx, options)
    say(
        f"building with {flavour} {version}: {'strongly' if plan.strongly_typed else 'weakly'} typed, "
        f"{plan.precision}, device {plan.device}"
    )

    logger = trt.Logger(trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING)
    if plan.plugin:  # before the parser looks plugins up
        load_plugin_library(trt, plan.plugin, plan.plugin_ids)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, plan))
    _parser = _parse(trt, network, logger, onnx, plan)  # keep the parser alive until the build is done
    config = builder.create_builder_config()
    profiles = apply_plan(trt, builder, network, config, plan, options)
    cache_path = Path(options.timing_cache) if options.timing_cache else None
    _load_timing_cache(config, cache_path, plan)

    monitor = None
    if options.progress and hasattr(trt, "IProgressMonitor") and hasattr(config, "progress_monitor"):
        monitor = make_progress_monitor(trt)
        config.progress_monitor = monitor
    elif options.progress:
        plan.notes.append(
            "no IProgressMonitor in this TensorRT (needs >= 10.0): building without a progress bar"
        )
    for note in plan.notes:
        say(f"  {note}")

    previous = None
    if monitor is not None and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda *_: monitor.cancel())
    start = time.perf_counter()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    seconds = time.perf_counter() - start
    if monitor is not None and monitor.cancelled:
        raise KeyboardInterrupt
    if serialized is None:
        raise BackendError(
            f"{flavour} {version} failed to build {onnx.path.name} (run with --verbose for the builder log)"
        )
    data = _engine_bytes(serialized)

    sidecar = EngineSidecar(
        builder={"flavour": flavour, "version": version},
        gpu=_sidecar_gpu(flavour),
        precision=plan.precision,
        profiles=profiles,
        onnx_metadata=dict(onnx.metadata),
        options=_sidecar_options(plan, options),
        onnx_file=onnx.path.name,
        onnx_sha256=onnx.sha256,
        plugins=[describe_plugin_library(plan.plugin, plan.plugin_ids, plan.serialize_plugin)]
        if plan.plugin
        else [],
    )
    side_path = sidecar_path(engine_path)
    import json

    with atomic_path(engine_path) as tmp_engine:
        tmp_engine.write_bytes(data)
        atomic_write_bytes(side_path, (json.dumps(sidecar.to_json(), indent=2) + "\n").encode())
    if cache_path is not None and plan.use_timing_cache and hasattr(config, "get_timing_cache"):
        cache = config.get_timing_cache()
        if cache is not None:
            atomic_write_bytes(cache_path, _engine_bytes(cache.serialize()))
    say(f"wrote {engine_path} ({len(data) / 1e6:.2f} MB) and {side_path.name} in {seconds:.1f} s")
    return BuildReport(engine_path, side_path, seconds, len(data), plan, sidecar.to_json())


def _sidecar_gpu(flavour: str) -> dict[str, str]:
    info = gpu_info()
    if flavour == "tensorrt_rtx":
        # RTX engines are compiled for compute-capability targets and JIT-specialised on the device,
        # not tied to the build machine's GPU (which may not exist).
        return {"name": info["name"], "compute_capability": "none"}
    return info


def _sidecar_options(plan: BuildPlan, options: BuildOptions) -> dict[str, Any]:
    return {
        "strongly_typed": plan.strongly_typed,
        "flags": list(plan.flags),
        "device": plan.device,
        "dla_core": plan.dla_core,
        "gpu_fallback": bool(options.gpu_fallback and plan.device == "DLA"),
        "version_compatible": bool(options.version_compatible),
        "exclude_lean_runtime": bool(options.exclude_lean_runtime),
        "hardware_compatibility": options.hardware_compatibility,
        "sla_core_fp32": plan.pin_sla_core_fp32 or plan.strongly_typed,
        "workspace_mib": options.workspace_mib,
        "optimization_level": options.optimization_level,
        "compute_capabilities": list(options.compute_capabilities),
        "timing_cache": options.timing_cache if plan.use_timing_cache else None,
        "notes": list(plan.notes),
        "requested": {k: v for k, v in asdict(options).items() if k not in ("progress", "verbose", "shapes")},
    }
