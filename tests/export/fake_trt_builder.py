"""A fake `tensorrt` / `tensorrt_rtx` module for the builder side: records every configuration call.

Flavours differ the way the real ones do: TensorRT 10 has precision flags (FP16, INT8, precision
constraints); TensorRT 11 and TensorRT-RTX have none (strongly typed only); RTX has compute-capability
targets; old versions lack IProgressMonitor / builder_optimization_level. The network is filled from the
ONNX file (inputs with -1 for dynamic dims, one layer per node, named like the node) as the ONNX parser does.
A node of a custom domain resolves like onnx-tensorrt's fallback importer: a registered plugin of that name
(plugin_version / plugin_namespace attributes) first, then the node's function body, else a parse error. The
plugin registry records load_library calls in the same ordered log as parsing and building (`log["calls"]`).
"""

from __future__ import annotations

import enum
import types

import onnx
from onnx import helper

BASE_FLAGS = [
    "GPU_FALLBACK",
    "REFIT",
    "DISABLE_TIMING_CACHE",
    "TF32",
    "VERSION_COMPATIBLE",
    "EXCLUDE_LEAN_RUNTIME",
]
TRT10_FLAGS = ["FP16", "BF16", "INT8", "FP8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"]


class FakeLayer:
    def __init__(self, name: str, op: str):
        self.name, self.op = name, op
        self.precision = None
        self.num_outputs = 1
        self.output_types: dict[int, object] = {}

    def set_output_type(self, index, dtype):
        self.output_types[index] = dtype


class FakeTensor:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class FakeNetwork:
    def __init__(self, flags: int):
        self.flags = flags
        self.inputs: list[FakeTensor] = []
        self.layers: list[FakeLayer] = []

    @property
    def num_inputs(self):
        return len(self.inputs)

    def get_input(self, i):
        return self.inputs[i]

    @property
    def num_layers(self):
        return len(self.layers)

    def get_layer(self, i):
        return self.layers[i]


class FakeParserError:
    def __init__(self, desc, node_name, op):
        self._desc, self._node, self._op = desc, node_name, op

    def desc(self):
        return self._desc

    def node_name(self):
        return self._node

    def node_operator(self):
        return self._op


class FakeCache:
    def __init__(self, data: bytes):
        self.data = data

    def serialize(self):
        return b"cache:" + self.data[-16:] + b"+1"


class FakeRegistry:
    """The process-wide IPluginRegistry: load_library registers `provides` (None when it refuses)."""

    def __init__(self, calls: list, provides: tuple, refuse: bool):
        self.calls, self.provides, self.refuse = calls, provides, refuse
        self.creators: set[tuple[str, str, str]] = set()

    def load_library(self, path):
        self.calls.append(("load_library", path))
        if self.refuse:
            return None
        self.creators |= set(self.provides)
        return object()

    def get_creator(self, name, version, namespace=""):
        return (name, version, namespace) if (name, version, namespace) in self.creators else None


class FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


def make_fake_trt(
    flavour: str = "tensorrt",
    version: str = "10.3.0",
    progress_monitor: bool = True,
    optimization_level: bool = True,
    dla_cores: int = 0,
    dla_refuses: str | None = None,
    fail_build: bool = False,
    parser_error: str | None = None,
    plugin_provides: tuple = (("SlabLinearAttention", "1", "slab"),),
    plugin_refused: bool = False,
):
    """A module object with the builder API of `flavour` `version`. Its `.log` records what was called.

    plugin_provides: the (name, version, namespace) creators a loaded plugin library registers;
    plugin_refused: load_library fails as for a library built against another TensorRT.
    """
    trt = types.ModuleType(flavour)
    trt.__version__ = version
    trt.log = {"flags": set(), "built": 0, "progress_events": [], "calls": []}
    registry = FakeRegistry(trt.log["calls"], plugin_provides, plugin_refused)
    trt.get_plugin_registry = lambda: registry
    strongly_only = flavour == "tensorrt_rtx" or int(version.split(".")[0]) >= 11
    flags = BASE_FLAGS + ([] if strongly_only else TRT10_FLAGS)
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flags)
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 5})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM"])
    trt.DeviceType = enum.IntEnum("DeviceType", ["GPU", "DLA"])
    trt.HardwareCompatibilityLevel = enum.IntEnum(
        "HardwareCompatibilityLevel", ["NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"]
    )
    if flavour == "tensorrt_rtx":
        trt.ComputeCapability = enum.IntEnum(
            "ComputeCapability", ["NONE", "CURRENT", "SM75", "SM80", "SM86", "SM89"]
        )
    trt.float32 = "float32"
    trt.float16 = "float16"

    class Logger:
        VERBOSE, INFO, WARNING, ERROR = 4, 3, 2, 1

        def __init__(self, severity):
            self.severity = severity

    trt.Logger = Logger

    if progress_monitor:

        class IProgressMonitor:
            def __init__(self):
                pass

        trt.IProgressMonitor = IProgressMonitor

    class Config:
        def __init__(self):
            self.pools = {}
            self.profiles = []
            self.default_device_type = trt.DeviceType.GPU
            self.DLA_core = -1
            self.hardware_compatibility_level = trt.HardwareCompatibilityLevel.NONE
            self.progress_monitor = None
            self.timing_cache = None
            self.compute_capabilities = {}
            self.num_compute_capabilities = 0
            self.plugins_to_serialize = []
            if optimization_level:
                self.builder_optimization_level = 3

        def set_flag(self, flag):
            assert isinstance(flag, trt.BuilderFlag), flag
            trt.log["flags"].add(flag.name)

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool.name] = size

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, data):
            trt.log["timing_cache_in"] = bytes(data)
            return FakeCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.timing_cache = cache
            return True

        def get_timing_cache(self):
            return self.timing_cache

        def can_run_on_DLA(self, layer):
            return not (dla_refuses and dla_refuses in layer.name)

        if flavour == "tensorrt_rtx":

            def set_compute_capability(self, cc, index):
                self.compute_capabilities[index] = cc.name

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            trt.log["network_flags"] = flags
            trt.log["network"] = FakeNetwork(flags)
            return trt.log["network"]

        def create_builder_config(self):
            trt.log["config"] = Config()
            return trt.log["config"]

        def create_optimization_profile(self):
            return FakeProfile()

        def build_serialized_network(self, network, config):
            monitor = config.progress_monitor
            if monitor is not None:
                monitor.phase_start("Building engine", None, 2)
                monitor.phase_start("Timing", "Building engine", 3)
                for step in range(3):
                    keep_going = monitor.step_complete("Timing", step)
                    trt.log["progress_events"].append(keep_going)
                monitor.phase_finish("Timing")
                monitor.step_complete("Building engine", 0)
                monitor.phase_finish("Building engine")
            trt.log["built"] += 1
            trt.log["calls"].append(("build_serialized_network",))
            return None if fail_build else b"FAKE-ENGINE:" + ",".join(sorted(trt.log["flags"])).encode()

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.errors = []

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

        def parse_from_file(self, path):
            trt.log["calls"].append(("parse_from_file", path))
            if parser_error:
                self.errors.append(FakeParserError(parser_error + "\nsecond line", "node_x", "Einsum"))
                return False
            model = onnx.load(path)
            for value in model.graph.input:
                dims = [
                    d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
                ]
                self.network.inputs.append(FakeTensor(value.name, tuple(dims)))
            bodies = {(f.domain, f.name) for f in model.functions}
            for node in model.graph.node:
                kind = node.op_type
                if node.domain not in ("", "ai.onnx"):
                    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                    version = attrs.get("plugin_version", b"1").decode()
                    namespace = attrs.get("plugin_namespace", b"").decode()
                    if registry.get_creator(node.op_type, version, namespace) is not None:
                        kind = "PluginV3"
                    elif (node.domain, node.op_type) in bodies:
                        kind = "function body"
                    else:
                        self.errors.append(FakeParserError(
                            "Plugin not found, are the plugin name, version, and namespace correct?",
                            node.name, node.op_type))  # fmt: skip
                        return False
                self.network.layers.append(FakeLayer(node.name, kind))
            return True

    trt.Builder = Builder
    trt.OnnxParser = OnnxParser
    return trt
