"""A fake `tensorrt` / `tensorrt_rtx` module for the builder side: records every configuration call.

Flavours differ the way the real ones do: TensorRT 10 has precision flags (FP16, INT8, precision
constraints); TensorRT 11 and TensorRT-RTX have none (strongly typed only); RTX has compute-capability
targets; old versions lack IProgressMonitor / builder_optimization_level. The network is filled from the
ONNX file (inputs with -1 for dynamic dims, one layer per node, named like the node) as the ONNX parser does.
"""

from __future__ import annotations

import enum
import types

import onnx

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
):
    """A module object with the builder API of `flavour` `version`. Its `.log` records what was called."""
    trt = types.ModuleType(flavour)
    trt.__version__ = version
    trt.log = {"flags": set(), "built": 0, "progress_events": []}
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
            if parser_error:
                self.errors.append(FakeParserError(parser_error + "\nsecond line", "node_x", "Einsum"))
                return False
            model = onnx.load(path)
            for value in model.graph.input:
                dims = [
                    d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
                ]
                self.network.inputs.append(FakeTensor(value.name, tuple(dims)))
            self.network.layers = [FakeLayer(n.name, n.op_type) for n in model.graph.node]
            return True

    trt.Builder = Builder
    trt.OnnxParser = OnnxParser
    return trt
