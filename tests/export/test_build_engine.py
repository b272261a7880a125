"""TensorRT-RTX builds an engine from every exported zoo model (CPU-only build; engines are not run here).

Skipped, with the reason printed, where tensorrt_rtx is not importable (`make test` installs it).
"""

from __future__ import annotations

import json

import pytest
from _export_helpers import write_custom_op_onnx, zoo_models

from slab_edge.export.trt_builder import BuildOptions, build_engine
from slab_edge.runtime.metadata import EngineSidecar, sidecar_path

pytestmark = pytest.mark.trt
ZOO = zoo_models()


@pytest.fixture(scope="module")
def rtx():
    try:
        import tensorrt_rtx
    except Exception as err:  # ImportError, or OSError from missing shared libraries
        pytest.skip(
            f"tensorrt_rtx not importable ({err}); pip install tensorrt-rtx-cu13 to run engine builds"
        )
    return tensorrt_rtx


FAST = dict(optimization_level=0, progress=False, max_batch=4)


@pytest.mark.parametrize("name", ZOO)
def test_rtx_builds_every_zoo_model(rtx, zoo_exports, name, tmp_path):
    _, report = zoo_exports.get(name)
    engine = tmp_path / f"{name}.engine"
    built = build_engine(report.path, engine, BuildOptions(builder="tensorrt_rtx", **FAST))
    assert engine.stat().st_size == built.engine_bytes > 10_000
    side = EngineSidecar.from_json(json.loads(sidecar_path(engine).read_text()))
    assert side.builder == {"flavour": "tensorrt_rtx", "version": rtx.__version__}
    assert side.precision == "fp32" and side.options["strongly_typed"] is True
    chw = report.metadata["input_size"]
    assert side.profiles == [{"input": {"min": [1, *chw], "opt": [1, *chw], "max": [4, *chw]}}]
    assert side.onnx_metadata["slab_edge.model"] == name
    assert len(side.onnx_sha256) == 64 and side.onnx_file == report.path.name
    print(f"{name}: RTX build {built.seconds:.2f} s, {built.engine_bytes / 1e6:.1f} MB")


def test_rtx_builds_fp16_and_int8_variants(rtx, zoo_exports, tmp_path):
    """The strongly typed path takes the mixed-precision and QDQ exports as they are."""
    import onnx

    from slab_edge.export.onnx_export import save_onnx, set_metadata
    from slab_edge.export.precision import convert_fp16, quantize_int8

    _, report = zoo_exports.get("slab_deit_tiny_patch16_224")
    fp32 = onnx.load(str(report.path))
    variants = {"fp16": convert_fp16(fp32), "int8": quantize_int8(fp32, "digits", count=8)}
    for precision, proto in variants.items():
        set_metadata(proto, {**report.metadata, "precision": precision})
        path = save_onnx(proto, tmp_path / f"m.{precision}.onnx")
        built = build_engine(path, options=BuildOptions(**FAST))
        assert built.sidecar_data["precision"] == precision
        assert built.engine.is_file() and sidecar_path(built.engine).is_file()
        print(f"{precision}: RTX build {built.seconds:.2f} s")


def test_rtx_refuses_what_it_cannot_do(rtx, zoo_exports, tmp_path):
    from slab_edge.errors import InputError

    _, report = zoo_exports.get("slab_deit_tiny_patch16_224")
    engine = tmp_path / "x.engine"
    with pytest.raises(InputError, match="strongly typed"):
        build_engine(report.path, engine, BuildOptions(precision="fp16", **FAST))
    with pytest.raises(InputError, match="DLA"):
        build_engine(report.path, engine, BuildOptions(dla_core=0, **FAST))
    assert not engine.exists() and not sidecar_path(engine).exists()


def test_build_cli_and_bad_input(rtx, zoo_exports, tmp_path, capsys):
    from slab_edge.cli import main

    _, report = zoo_exports.get("slab_deit_tiny_patch16_224")
    engine = tmp_path / "cli.engine"
    args = ["build", str(report.path), "-o", str(engine), "--opt-level", "0", "--no-progress"]
    code = main(
        [*args, "--min-shape", "1x3x224x224", "--opt-shape", "2x3x224x224", "--max-shape", "2x3x224x224"]
    )
    assert code == 0, capsys.readouterr().err
    profile = json.loads(sidecar_path(engine).read_text())["profiles"][0]["input"]
    assert profile["opt"] == [2, 3, 224, 224] and profile["max"] == [2, 3, 224, 224]
    assert "wrote" in capsys.readouterr().out

    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(report.path.read_bytes()[: report.path.stat().st_size // 2])
    bad_engine = tmp_path / "truncated.engine"
    assert main(["build", str(truncated), "-o", str(bad_engine)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a valid ONNX model" in err
    assert not bad_engine.exists() and not sidecar_path(bad_engine).exists()
    assert list(tmp_path.glob(".*.tmp")) == []


def test_rtx_custom_op_exports(rtx, tmp_path):
    """Custom SLA nodes with function bodies (the `--custom-ops ort` export) build from the bodies on
    TensorRT-RTX; body-less ones (`--custom-ops trt`, plugin layers, on which an RTX build aborts) are refused
    before the builder runs."""
    from slab_edge.errors import InputError

    built = build_engine(write_custom_op_onnx(tmp_path / "ort.onnx", body=True), options=BuildOptions(**FAST))
    assert built.engine.stat().st_size == built.engine_bytes > 0 and built.sidecar_data["plugins"] == []
    assert any("from their function bodies" in note for note in built.plan.notes)
    with pytest.raises(InputError, match="TensorRT-RTX has no plugin support"):
        build_engine(write_custom_op_onnx(tmp_path / "trt.onnx"), options=BuildOptions(**FAST))
    assert not (tmp_path / "trt.engine").exists()
