"""`slab-edge build` with the SlabLinearAttention TensorRT plugin, against the fake `tensorrt` module: the
plugin library is loaded before the parser runs and recorded in the sidecar; function-bodied custom nodes
build without it; TensorRT-RTX refuses plugins before building; a bad library is one clear error, nothing
written.

Stand-in plugin libraries are real shared objects (tests/conftest.py `plugin_libraries`), so the ctypes check
runs for real; what the fake registry does with them is scripted (fake_trt_builder.FakeRegistry).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from _export_helpers import write_custom_op_onnx
from fake_trt_builder import make_fake_trt

from slab_edge import native
from slab_edge.errors import BackendError, InputError
from slab_edge.export import trt_builder
from slab_edge.export.trt_builder import BuildOptions, build_engine
from slab_edge.runtime.metadata import sidecar_path

TRT10, TRT11, RTX = ("tensorrt", "10.3.0"), ("tensorrt", "11.4.1"), ("tensorrt_rtx", "1.7.1.116")
SLA = {"name": "SlabLinearAttention", "version": "1", "namespace": "slab"}


def calls(trt) -> list[str]:
    return [entry[0] for entry in trt.log["calls"]]


def layer_kinds(trt) -> list[str]:
    return [layer.op for layer in trt.log["network"].layers]


FAST = dict(progress=False)


@pytest.mark.parametrize("flavour_version", [TRT10, TRT11], ids=["trt10", "trt11"])
def test_plugin_loaded_before_parsing_and_recorded(
    flavour_version, tmp_path, plugin_libraries, no_built_plugin
):
    onnx_path = write_custom_op_onnx(tmp_path / "m.trt.onnx")
    trt = make_fake_trt(*flavour_version)
    library = plugin_libraries.plugin
    report = build_engine(onnx_path, tmp_path / "m.engine", BuildOptions(plugin=str(library), **FAST),
                          trt_module=trt)  # fmt: skip
    assert calls(trt) == ["load_library", "parse_from_file", "build_serialized_network"]
    assert trt.log["calls"][0][1] == str(library)
    assert layer_kinds(trt) == ["PluginV3"]  # the parser mapped the node to the registered plugin
    side = json.loads(sidecar_path(report.engine).read_text())
    assert side["plugins"] == [{
        "library": library.name,
        "sha256": hashlib.sha256(library.read_bytes()).hexdigest(),
        "plugins": [SLA],
        "serialized_in_engine": False,
    }]  # fmt: skip
    assert trt.log["config"].plugins_to_serialize == []


def test_default_plugin_is_the_built_library(tmp_path, plugin_libraries, monkeypatch):
    ops = tmp_path / "ops"
    ops.mkdir()
    shutil.copy(plugin_libraries.plugin, ops / native.LIBRARIES["trt"])
    monkeypatch.setenv(native.OPS_DIR_ENV, str(ops))
    trt = make_fake_trt(*TRT10)
    report = build_engine(
        write_custom_op_onnx(tmp_path / "m.onnx"), None, BuildOptions(**FAST), trt_module=trt
    )
    assert trt.log["calls"][0] == ("load_library", str(ops / native.LIBRARIES["trt"]))
    assert report.sidecar_data["plugins"][0]["library"] == native.LIBRARIES["trt"]
    assert any("plugin library" in note for note in report.plan.notes)


def test_bodyless_nodes_without_a_plugin_are_refused(tmp_path, no_built_plugin):
    onnx_path = write_custom_op_onnx(tmp_path / "m.onnx")
    trt = make_fake_trt(*TRT10)
    with pytest.raises(
        InputError,
        match=r"1 SlabLinearAttention node without function bodies, which only the TensorRT plugin",
    ):
        build_engine(onnx_path, tmp_path / "m.engine", BuildOptions(**FAST), trt_module=trt)
    assert calls(trt) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "no_ops"]


def test_function_bodies_build_without_the_plugin(tmp_path, no_built_plugin):
    trt = make_fake_trt(*TRT10)
    report = build_engine(write_custom_op_onnx(tmp_path / "m.onnx", body=True), None, BuildOptions(**FAST),
                          trt_module=trt)  # fmt: skip
    assert calls(trt) == ["parse_from_file", "build_serialized_network"]
    assert layer_kinds(trt) == ["function body"]
    assert report.sidecar_data["plugins"] == []
    assert any("build from their function bodies" in note for note in report.plan.notes)


def test_the_plugin_takes_precedence_over_function_bodies(tmp_path, plugin_libraries):
    trt = make_fake_trt(*TRT10)
    build_engine(write_custom_op_onnx(tmp_path / "m.onnx", body=True), None,
                 BuildOptions(plugin=str(plugin_libraries.plugin), **FAST), trt_module=trt)  # fmt: skip
    assert layer_kinds(trt) == ["PluginV3"]


def test_tensorrt_rtx_refuses_plugins_before_building(tmp_path, plugin_libraries, no_built_plugin):
    bodyless = write_custom_op_onnx(tmp_path / "a.onnx")
    trt = make_fake_trt(*RTX)
    with pytest.raises(
        InputError, match=r"^--plugin: TensorRT-RTX has no plugin support \(a build with a plug"
    ):
        build_engine(
            bodyless, None, BuildOptions(plugin=str(plugin_libraries.plugin), **FAST), trt_module=trt
        )
    with pytest.raises(InputError, match=r"without function bodies .* TensorRT-RTX has no plugin support"):
        build_engine(bodyless, None, BuildOptions(**FAST), trt_module=trt)
    assert calls(trt) == [] and not list(tmp_path.glob("*.engine*"))
    report = build_engine(write_custom_op_onnx(tmp_path / "b.onnx", body=True), None, BuildOptions(**FAST),
                          trt_module=trt)  # fmt: skip
    assert calls(trt) == ["parse_from_file", "build_serialized_network"]
    assert layer_kinds(trt) == ["function body"] and report.sidecar_data["plugins"] == []
    assert any("TensorRT-RTX builds them from their function bodies" in note for note in report.plan.notes)


@pytest.mark.parametrize(
    "library,fake,match",
    [
        ("missing", {}, r"TensorRT plugin library not found: .*nowhere\.so"),
        ("not_a_library", {}, r"libnotalibrary\.so: cannot be loaded as a shared library \("),
        (
            "no_entry_points",
            {},
            r"is not a TensorRT plugin library: it does not export getCreators, setLoggerF",
        ),
        (
            "plugin",
            {"plugin_refused": True},
            r"TensorRT 10\.3\.0 refused plugin library .*built against another",
        ),
        ("plugin", {"plugin_provides": ()}, r"loaded but does not register slab::SlabLinearAttention v1$"),
    ],
)
def test_bad_plugin_libraries(tmp_path, plugin_libraries, library, fake, match):
    onnx_path = write_custom_op_onnx(tmp_path / "m.onnx")
    path = tmp_path / "nowhere.so" if library == "missing" else getattr(plugin_libraries, library)
    trt = make_fake_trt(*TRT10, **fake)
    with pytest.raises(BackendError, match=match) as caught:
        build_engine(onnx_path, tmp_path / "m.engine", BuildOptions(plugin=str(path), **FAST), trt_module=trt)
    assert "\n" not in str(caught.value)
    assert "parse_from_file" not in calls(trt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_version_compatible_engines_carry_the_plugin(tmp_path, plugin_libraries):
    trt = make_fake_trt(*TRT10)
    library = str(plugin_libraries.plugin)
    options = BuildOptions(plugin=library, version_compatible=True, exclude_lean_runtime=True, **FAST)
    report = build_engine(write_custom_op_onnx(tmp_path / "m.onnx"), None, options, trt_module=trt)
    assert trt.log["config"].plugins_to_serialize == [library]
    assert {"VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"} <= trt.log["flags"]
    assert report.sidecar_data["plugins"][0]["serialized_in_engine"] is True


def test_plugins_need_tensorrt_10(tmp_path, plugin_libraries):
    trt = make_fake_trt("tensorrt", "8.6.1")
    with pytest.raises(InputError, match=r"IPluginV3 plugin: it needs TensorRT >= 10 \(not 8\.6\.1\)"):
        build_engine(write_custom_op_onnx(tmp_path / "m.onnx"), None,
                     BuildOptions(plugin=str(plugin_libraries.plugin), **FAST), trt_module=trt)  # fmt: skip
    assert calls(trt) == []


def test_parser_error_on_a_custom_node_names_the_plugin(tmp_path, monkeypatch):
    """Without the onnx package the builder cannot see custom nodes up front; the parser's error says why."""
    onnx_path = write_custom_op_onnx(tmp_path / "m.onnx")
    real = trt_builder.read_onnx

    def without_onnx(path):
        info = real(path)
        info.custom_nodes, info.custom_bodies = None, False
        return info

    monkeypatch.setattr(trt_builder, "read_onnx", without_onnx)
    with pytest.raises(
        BackendError, match=r"\(SlabLinearAttention\): Plugin not found.*: pass --plugin LIB\)$"
    ):
        build_engine(onnx_path, None, BuildOptions(**FAST), trt_module=make_fake_trt(*TRT10))


def test_build_cli_plugin_option(tmp_path, plugin_libraries, monkeypatch, capsys):
    from slab_edge.cli import main

    fakes = []

    def fake_builder(flavour=None):
        fakes.append(make_fake_trt(*TRT10))
        return fakes[-1], "tensorrt", "10.3.0"

    monkeypatch.setattr(trt_builder, "import_builder", fake_builder)
    onnx_path = write_custom_op_onnx(tmp_path / "m.onnx")
    engine = tmp_path / "m.engine"
    args = ["build", str(onnx_path), "-o", str(engine), "--no-progress"]
    assert main([*args, "--plugin", str(plugin_libraries.plugin)]) == 0, capsys.readouterr().err
    assert fakes[-1].log["calls"][0] == ("load_library", str(plugin_libraries.plugin))
    assert json.loads(sidecar_path(engine).read_text())["plugins"][0]["plugins"] == [SLA]
    engine.unlink()
    sidecar_path(engine).unlink()
    assert main([*args, "--plugin", str(plugin_libraries.no_entry_points)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a TensorRT plugin library" in err
    assert not engine.exists() and not sidecar_path(engine).exists()
