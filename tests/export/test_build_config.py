"""The engine builder's decisions and API calls for TensorRT 10, TensorRT 11 and TensorRT-RTX, driven through
a fake `trt` module (no TensorRT needed): typing and flags per flavour, SLA-core fp32 pinning, profiles,
DLA, timing cache, progress monitor, sidecar contents, failures that leave nothing behind."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import onnx
import pytest
from fake_trt_builder import FakeCache, make_fake_trt
from onnx import TensorProto, helper

from slab_edge.errors import BackendError, InputError
from slab_edge.export.onnx_export import set_metadata
from slab_edge.export.trt_builder import BuildOptions, build_engine, make_progress_monitor, plan_build
from slab_edge.runtime.metadata import EngineSidecar, sidecar_path

TRT10, TRT11, RTX = ("tensorrt", "10.3.0"), ("tensorrt", "11.4.1"), ("tensorrt_rtx", "1.7.1.116")


def write_onnx(path, precision="fp32", batch="batch"):
    """A valid little classifier ONNX: [B, 3, 4, 4] -> Flatten -> MatMul (an `sla_core` node) -> Relu."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [48, 10], np.ones(480, dtype=np.float32).tolist())
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], name="flatten/node_flatten"),
        helper.make_node("MatMul", ["flat", "w"], ["mm"], name="blocks.0.attn/sla_core/node_matmul"),
        helper.make_node("Relu", ["mm"], ["logits"], name="head/node_relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    set_metadata(
        model, {"model": "toy", "precision": precision, "input_name": "input", "input_size": [3, 4, 4]}
    )
    onnx.save(model, str(path))
    return path


# -- pure decisions -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flavour_version,onnx_precision,asked,strong,precision,flags",
    [
        (TRT10, "fp32", "auto", False, "fp32", []),
        (TRT10, "fp32", "fp16", False, "fp16", ["FP16", "OBEY_PRECISION_CONSTRAINTS"]),
        (TRT10, "fp16", "auto", False, "fp16", ["FP16", "OBEY_PRECISION_CONSTRAINTS"]),
        (TRT10, "int8", "auto", False, "int8", ["INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"]),
        (TRT11, "fp32", "auto", True, "fp32", []),
        (TRT11, "fp16", "auto", True, "fp16", []),
        (TRT11, "int8", "int8", True, "int8", []),
        (RTX, "fp16", "auto", True, "fp16", []),
    ],
)
def test_plan_typing_and_flags(flavour_version, onnx_precision, asked, strong, precision, flags):
    plan = plan_build(*flavour_version, onnx_precision, BuildOptions(precision=asked))
    assert plan.strongly_typed is strong
    assert plan.precision == precision
    assert plan.flags == flags
    assert plan.pin_sla_core_fp32 is (not strong and precision != "fp32")


@pytest.mark.parametrize(
    "flavour_version,onnx_precision,options,match",
    [
        (TRT11, "fp32", dict(precision="fp16"), "strongly typed"),
        (RTX, "fp32", dict(precision="int8"), "strongly typed"),
        (TRT10, "fp32", dict(precision="int8"), "QDQ"),
        (RTX, "fp16", dict(dla_core=0), "no DLA"),
        (TRT11, "fp32", dict(dla_core=0), "fp16/int8 only"),
        (TRT10, "fp32", dict(dla_core=0, precision="fp32"), "fp16/int8 only"),
        (TRT11, "fp16", dict(strongly_typed=False), "strongly typed networks only"),
        (TRT10, "fp32", dict(exclude_lean_runtime=True), "version-compatible"),
        (TRT10, "fp32", dict(compute_capabilities=("8.9",)), "TensorRT-RTX targets"),
        (TRT10, "fp32", dict(precision="bf16"), "unknown precision"),
    ],
)
def test_plan_refuses_impossible_requests(flavour_version, onnx_precision, options, match):
    with pytest.raises(InputError, match=match):
        plan_build(*flavour_version, onnx_precision, BuildOptions(**options))


def test_plan_dla_and_portability():
    plan = plan_build(*TRT10, "fp32", BuildOptions(dla_core=1, gpu_fallback=True, version_compatible=True,
                                                    exclude_lean_runtime=True))  # fmt: skip
    assert plan.device == "DLA" and plan.dla_core == 1 and plan.fixed_shapes
    assert plan.precision == "fp16" and any("DLA runs fp16" in n for n in plan.notes)
    assert {"FP16", "GPU_FALLBACK", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"} <= set(plan.flags)
    rtx = plan_build(*RTX, "fp32", BuildOptions(timing_cache="x.cache"))
    assert not rtx.use_timing_cache and any("ignores timing caches" in n for n in rtx.notes)


# -- API calls through the fake module ---------------------------------------------------------------------
def test_trt10_fp16_build(tmp_path):
    onnx_path = write_onnx(tmp_path / "m.onnx")
    cache = tmp_path / "trt.cache"
    trt = make_fake_trt(*TRT10)
    opts = BuildOptions(precision="fp16", workspace_mib=256, timing_cache=str(cache), optimization_level=1,
                        max_batch=16, opt_batch=4, progress=True)  # fmt: skip
    report = build_engine(onnx_path, tmp_path / "m.engine", opts, trt_module=trt)

    assert trt.log["network_flags"] == 0  # weakly typed
    assert trt.log["flags"] == {"FP16", "OBEY_PRECISION_CONSTRAINTS"}
    layers = {layer.name: layer for layer in trt.log["network"].layers}
    assert layers["blocks.0.attn/sla_core/node_matmul"].precision == trt.float32
    assert layers["blocks.0.attn/sla_core/node_matmul"].output_types == {0: trt.float32}
    assert layers["head/node_relu"].precision is None
    config = trt.log["config"]
    assert config.pools == {"WORKSPACE": 256 << 20} and config.builder_optimization_level == 1
    assert config.profiles[0].shapes == {"input": ((1, 3, 4, 4), (4, 3, 4, 4), (16, 3, 4, 4))}
    assert trt.log["progress_events"] == [True, True, True]
    assert cache.read_bytes().startswith(b"cache:") and trt.log["timing_cache_in"] == b""

    side = json.loads(sidecar_path(report.engine).read_text())
    assert EngineSidecar.from_json(side).builder == {"flavour": "tensorrt", "version": "10.3.0"}
    assert side["precision"] == "fp16" and set(side["gpu"]) == {"name", "compute_capability"}
    assert side["profiles"] == [{"input": {"min": [1, 3, 4, 4], "opt": [4, 3, 4, 4], "max": [16, 3, 4, 4]}}]
    assert side["onnx_metadata"] == {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert side["onnx_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert side["options"]["strongly_typed"] is False and side["options"]["sla_core_fp32"] is True
    assert report.engine.read_bytes() == b"FAKE-ENGINE:FP16,OBEY_PRECISION_CONSTRAINTS"

    # second build reuses the timing cache it wrote
    first = cache.read_bytes()
    trt2 = make_fake_trt(*TRT10)
    report2 = build_engine(onnx_path, tmp_path / "m2.engine", opts, trt_module=trt2)
    assert trt2.log["timing_cache_in"] == first and any("reused" in n for n in report2.plan.notes)
    assert cache.read_bytes() == FakeCache(first).serialize()


@pytest.mark.parametrize("flavour_version", [TRT11, RTX], ids=["trt11", "rtx"])
def test_strongly_typed_builders(tmp_path, flavour_version):
    onnx_path = write_onnx(tmp_path / "m.fp16.onnx", precision="fp16")
    trt = make_fake_trt(*flavour_version)
    cc = ("8.6", "8.9") if flavour_version == RTX else ()
    report = build_engine(onnx_path, None, BuildOptions(compute_capabilities=cc),
                          trt_module=trt)  # fmt: skip
    assert trt.log["network_flags"] == 1 << 5  # STRONGLY_TYPED
    assert trt.log["flags"] == set()  # no precision flags exist there, none asked for
    assert all(layer.precision is None for layer in trt.log["network"].layers)
    assert report.engine == tmp_path / "m.fp16.engine"
    side = json.loads(sidecar_path(report.engine).read_text())
    assert side["precision"] == "fp16" and side["options"]["strongly_typed"] is True
    if flavour_version == RTX:
        assert trt.log["config"].compute_capabilities == {0: "SM86", 1: "SM89"}
        assert side["gpu"]["compute_capability"] == "none"  # RTX engines are not tied to the build GPU


def test_dla_build_fixed_shapes_and_fallback(tmp_path):
    onnx_path = write_onnx(tmp_path / "m.onnx")
    trt = make_fake_trt(*TRT10, dla_cores=2, dla_refuses="sla_core")
    with pytest.raises(InputError, match="cannot run on DLA.*--gpu-fallback"):
        build_engine(onnx_path, tmp_path / "a.engine", BuildOptions(dla_core=1), trt_module=trt)
    assert not (tmp_path / "a.engine").exists()
    with pytest.raises(InputError, match="2 DLA core"):
        build_engine(
            onnx_path, tmp_path / "a.engine", BuildOptions(dla_core=2, gpu_fallback=True), trt_module=trt
        )

    trt = make_fake_trt(*TRT10, dla_cores=2, dla_refuses="sla_core")
    opts = BuildOptions(dla_core=1, gpu_fallback=True, opt_batch=2, max_batch=8)
    build_engine(onnx_path, tmp_path / "dla.engine", opts, trt_module=trt)
    config = trt.log["config"]
    assert config.default_device_type == trt.DeviceType.DLA and config.DLA_core == 1
    assert {"GPU_FALLBACK", "FP16"} <= trt.log["flags"]
    assert config.profiles[0].shapes["input"] == ((2, 3, 4, 4),) * 3  # DLA: fixed shapes
    side = json.loads(sidecar_path(tmp_path / "dla.engine").read_text())
    assert side["options"]["device"] == "DLA" and side["options"]["dla_core"] == 1


def test_version_guards_and_portability(tmp_path):
    onnx_path = write_onnx(tmp_path / "m.onnx")
    old = make_fake_trt("tensorrt", "8.5.3", progress_monitor=False, optimization_level=False)
    with pytest.raises(BackendError, match="builder_optimization_level"):
        build_engine(onnx_path, tmp_path / "x.engine", BuildOptions(optimization_level=0), trt_module=old)
    report = build_engine(onnx_path, tmp_path / "x.engine", BuildOptions(version_compatible=True,
                          hardware_compatibility="ampere_plus"), trt_module=old)  # fmt: skip
    assert any("no IProgressMonitor" in n for n in report.plan.notes)
    assert {"VERSION_COMPATIBLE"} == old.log["flags"]
    assert old.log["config"].hardware_compatibility_level == old.HardwareCompatibilityLevel.AMPERE_PLUS
    side = json.loads(sidecar_path(report.engine).read_text())
    assert (
        side["options"]["version_compatible"] is True
        and side["options"]["hardware_compatibility"] == "ampere_plus"
    )


def test_failures_leave_nothing_behind(tmp_path):
    onnx_path = write_onnx(tmp_path / "m.onnx")
    engine = tmp_path / "m.engine"
    with pytest.raises(BackendError, match="failed to build"):
        build_engine(onnx_path, engine, BuildOptions(), trt_module=make_fake_trt(*TRT10, fail_build=True))
    with pytest.raises(
        BackendError, match=r"parser rejected m.onnx: node node_x \(Einsum\): unsupported op$"
    ):
        build_engine(
            onnx_path, engine, BuildOptions(), trt_module=make_fake_trt(*TRT10, parser_error="unsupported op")
        )
    with pytest.raises(InputError, match="dynamic dimensions besides the batch"):
        dyn = write_onnx(tmp_path / "dyn.onnx", batch="batch")
        model = onnx.load(str(dyn))
        model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
        onnx.save(model, str(dyn))
        build_engine(dyn, engine, BuildOptions(), trt_module=make_fake_trt(*TRT10))
    truncated = tmp_path / "t.onnx"
    truncated.write_bytes(onnx_path.read_bytes()[:200])
    with pytest.raises(InputError, match="not a valid ONNX model"):
        build_engine(truncated, engine, BuildOptions(), trt_module=make_fake_trt(*TRT10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dyn.onnx", "m.onnx", "t.onnx"]


def test_explicit_shapes_cli_parsing(tmp_path):
    from slab_edge.commands.build import parse_shapes

    assert parse_shapes([], [], []) is None
    assert parse_shapes(["x:1x2"], ["x:2x2"], ["x:3x2"]) == {"x": ((1, 2), (2, 2), (3, 2))}
    with pytest.raises(InputError, match="give all of"):
        parse_shapes(["1x3x4x4"], ["input:2x3x4x4"], ["4x3x4x4"])  # unnamed min, named opt
    with pytest.raises(InputError, match="expected NAME"):
        parse_shapes(["1x3xAx4"], ["1x3x4x4"], ["1x3x4x4"])
    onnx_path = write_onnx(tmp_path / "m.onnx")
    trt = make_fake_trt(*TRT10)
    opts = BuildOptions(shapes=parse_shapes(["1x3x4x4"], ["3x3x4x4"], ["5x3x4x4"]))
    build_engine(onnx_path, tmp_path / "m.engine", opts, trt_module=trt)
    assert trt.log["config"].profiles[0].shapes == {"input": ((1, 3, 4, 4), (3, 3, 4, 4), (5, 3, 4, 4))}
    with pytest.raises(InputError, match="does not fit input"):
        bad = BuildOptions(shapes=parse_shapes(["1x3x8x8"], ["1x3x8x8"], ["1x3x8x8"]))
        build_engine(onnx_path, tmp_path / "m.engine", bad, trt_module=make_fake_trt(*TRT10))


def test_progress_monitor_renders_and_cancels():
    trt = make_fake_trt(*TRT10)
    out = io.StringIO()
    monitor = make_progress_monitor(trt, stream=out)
    monitor.phase_start("Building engine", None, 3)
    monitor.phase_start("Timing", "Building engine", 2)
    assert monitor.step_complete("Timing", 0) is True
    monitor.cancel()
    assert monitor.step_complete("Timing", 1) is False  # TensorRT stops the build
    monitor.phase_finish("Timing")
    monitor.phase_finish("Building engine")
    assert out.getvalue() == "[build] Building engine (3 steps)\n"  # not a tty: top-level phases only


def test_no_builder_is_a_clear_error(monkeypatch):
    import importlib

    from slab_edge.export import trt_builder

    def refuse(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(importlib, "import_module", refuse)
    with pytest.raises(BackendError, match="no TensorRT builder importable.*pip install tensorrt"):
        trt_builder.import_builder()


def test_pre_10_networks_are_explicit_batch():
    import enum

    from slab_edge.export.trt_builder import BuildPlan, network_flags

    trt = make_fake_trt("tensorrt", "8.5.3")
    trt.NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 5}
    )
    assert network_flags(trt, BuildPlan("tensorrt", "8.5.3", False, "fp32")) == 1
    assert network_flags(trt, BuildPlan("tensorrt", "10.3.0", False, "fp32")) == 0
    assert network_flags(trt, BuildPlan("tensorrt", "10.3.0", True, "fp16")) == 1 << 5
