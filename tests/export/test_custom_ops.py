"""`export --custom-ops`: reduced zoo models with SLA, their cores fused into SlabLinearAttention nodes.

For each model the "ort" file is run four ways on the same inputs: with the slab custom-op library (its CPU
kernel, proven by the ORT profile), without it (ORT inlines the file's function body, proven by the profile
too), the standard-op export, and PyTorch. The "trt" file is checked for structure on its own (no function
body, a valid ONNX file without the schema), refused by ONNX Runtime without the library, and run with it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from slab_edge import cli
from slab_edge.errors import BackendError, InputError
from slab_edge.export.custom_ops import check_custom_graph, custom_nodes
from slab_edge.export.graph import find_sla_cores
from slab_edge.export.onnx_export import export_model, ort_session, parity_inputs, torch_logits
from slab_edge.export.precision import custom_node_io_types
from slab_edge.testing import ort_node_events

SLA_MODELS = [
    "slab_deit_tiny_patch16_224",
    "slab_pvt_tiny",
    "slab_swin_tiny_patch4_224",
    "slab_cswin_tiny_224",
]
#: fp32: the kernel vs the function body (both float32 inside, other summation order), relative to max |logit|
KERNEL_VS_BODY = 1e-5
#: fp32: every file vs PyTorch and vs the standard export, absolute (the exporter's own parity tolerance)
FP32_ABS = 1e-4
#: fp16 file vs PyTorch fp32, relative to max |logit| (the exporter's fp16 tolerance)
FP16_REL = 1e-2
#: fp16: kernel vs function body, relative to max |logit|. Both round the node's float32 result to fp16 once,
#: but their sums run in another order, so a few outputs differ by one fp16 ulp (2^-11 relative), and that
#: travels through the fp16 layers after the node (measured: 1.7e-3 on the reduced Swin, 2 stages of SLA)
FP16_KERNEL_VS_BODY = 5e-3


class CustomExports:
    """Lazily exported custom-op variants: (model, variant) -> (prepared, reports), one trace per pair."""

    def __init__(self, folder, zoo_exports):
        self.folder, self.zoo = folder, zoo_exports
        self.done: dict[tuple[str, str], tuple] = {}

    def get(self, name: str, variant: str = "ort"):
        if isinstance(self.done.get((name, variant)), str):  # known to have nothing to fuse
            pytest.skip(self.done[(name, variant)])
        if (name, variant) not in self.done:
            prepared, _ = self.zoo.get(name)  # the same randomized model as the standard export
            precisions = ["fp32", "fp16", "int8"] if name.startswith("slab_deit") else ["fp32", "fp16"]
            try:
                reports = export_model(
                    prepared,
                    self.folder / f"{name}.{variant}.onnx",
                    precisions=precisions,
                    custom_ops=variant,
                    calibration="digits",
                    calibration_count=8,
                )
            except InputError as err:
                if "no SLA core was fused" not in str(err):
                    raise
                self.done[(name, variant)] = f"{name}: its SLA layers do not call the fused op yet ({err})"
                pytest.skip(self.done[(name, variant)])
            self.done[(name, variant)] = (prepared, {r.precision: r for r in reports})
        return self.done[(name, variant)]


@pytest.fixture(scope="session")
def custom_exports(tmp_path_factory, zoo_exports, ort_ops_library):
    return CustomExports(tmp_path_factory.mktemp("custom_onnx"), zoo_exports)


def run_onnx(path, batch: np.ndarray, library=None, profile_prefix=None) -> tuple[np.ndarray, set]:
    """Logits and the set of (op, provider) node events ORT's profile records (empty without profiling)."""
    session = ort_session(path, 1, custom_op_library=library, profile_prefix=profile_prefix)
    logits = session.run(None, {session.get_inputs()[0].name: batch})[0].astype(np.float32)
    return logits, ort_node_events(session.end_profiling()) if profile_prefix is not None else set()


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


@pytest.mark.parametrize("name", SLA_MODELS)
def test_fp32_custom_op_equals_function_body_equals_standard_export_equals_pytorch(
    name, custom_exports, zoo_exports, ort_ops_library, tmp_path
):
    prepared, reports = custom_exports.get(name)
    report = reports["fp32"]
    proto = onnx.load(str(report.path))
    standard = onnx.load(str(zoo_exports.get(name)[1].path))
    assert report.custom_ops == "ort" and report.metadata["custom_ops"] == "ort"
    assert check_custom_graph(proto, "ort") == len(custom_nodes(proto)) == len(find_sla_cores(standard)) > 0
    assert not find_sla_cores(proto)  # every core fused
    for inputs, batch in parity_inputs(report.metadata, batch=2).items():
        torch_out = torch_logits(prepared.model, batch)
        kernel, kernel_events = run_onnx(report.path, batch, ort_ops_library, tmp_path / f"kernel-{inputs}")
        body, body_events = run_onnx(report.path, batch, None, tmp_path / f"body-{inputs}")
        standard_out, _ = run_onnx(zoo_exports.get(name)[1].path, batch)
        assert ("SlabLinearAttention", "CPUExecutionProvider") in kernel_events
        assert not [e for e in body_events if e[0] == "SlabLinearAttention"]  # the function was inlined
        scale = float(np.abs(torch_out).max())
        assert max_abs(kernel, body) <= KERNEL_VS_BODY * scale, inputs
        assert max_abs(kernel, standard_out) <= FP32_ABS, inputs
        assert max_abs(kernel, torch_out) <= FP32_ABS and max_abs(body, torch_out) <= FP32_ABS, inputs


@pytest.mark.parametrize("name", SLA_MODELS)
def test_fp16_custom_nodes_take_fp16_io_without_an_fp32_island(name, custom_exports, ort_ops_library):
    """The node accumulates in fp32 inside, so the fp16 file feeds it fp16 directly (no Cast around it);
    kernel and function body agree, and both are within the fp16 tolerance of PyTorch fp32."""
    prepared, reports = custom_exports.get(name)
    report = reports["fp16"]
    proto = onnx.load(str(report.path))
    types = custom_node_io_types(proto)
    assert types and all(set(t) == {onnx.TensorProto.FLOAT16} for t in types.values())
    producers = {out: node for node in proto.graph.node for out in node.output}
    for node in custom_nodes(proto):
        assert all(producers[i].op_type != "Cast" for i in node.input), node.name
    for inputs, batch in parity_inputs(report.metadata, batch=2).items():
        torch_out = torch_logits(prepared.model, batch)
        kernel, _ = run_onnx(report.path, batch, ort_ops_library)
        body, _ = run_onnx(report.path, batch)
        scale = float(np.abs(torch_out).max())
        assert max_abs(kernel, torch_out) <= FP16_REL * scale, inputs
        assert max_abs(kernel, body) <= FP16_KERNEL_VS_BODY * scale, inputs


def test_int8_keeps_the_custom_nodes_in_float(custom_exports, ort_ops_library):
    _, reports = custom_exports.get("slab_deit_tiny_patch16_224")
    proto = onnx.load(str(reports["int8"].path))
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "SlabLinearAttention"} <= ops
    assert check_custom_graph(proto, "ort") == 2
    batch = parity_inputs(reports["int8"].metadata, batch=2)["digits"]
    kernel, _ = run_onnx(reports["int8"].path, batch, ort_ops_library)
    body, _ = run_onnx(reports["int8"].path, batch)
    assert np.isfinite(kernel).all()
    assert max_abs(kernel, body) <= KERNEL_VS_BODY * float(np.abs(body).max())


@pytest.fixture(scope="module")
def trt_export(tmp_path_factory, ort_ops_library):
    """`slab-edge export ... --custom-ops trt --json` on a reduced SLAB-DeiT (fp32 + fp16)."""
    out = tmp_path_factory.mktemp("trt") / "deit.trt.onnx"
    argv = ["export", "slab_deit_tiny_patch16_224", "--model-kwargs", '{"embed_dim": 24, "depth": 2}', "-o",
            str(out), "--precision", "fp32", "fp16", "--custom-ops", "trt", "--json"]  # fmt: skip
    return out, argv


def test_trt_variant_from_the_cli(trt_export, ort_ops_library, capsys, monkeypatch):
    out, argv = trt_export
    monkeypatch.delenv("SLAB_EDGE_OPS_DIR", raising=False)
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    summary = json.loads(text[text.index("[\n") :])
    assert [s["custom_ops"] for s in summary] == ["trt", "trt"]
    assert all(s["custom_op_nodes"] == 2 and s["op_counts"]["SlabLinearAttention"] == 2 for s in summary)
    assert all(str(ort_ops_library) in s["parity_note"] for s in summary)  # parity ran through the library
    assert all(p["passed"] for s in summary for p in s["parity"])
    for path in (out, out.with_name("deit.trt.fp16.onnx")):
        proto = onnx.load(str(path))
        assert not proto.functions and check_custom_graph(proto, "trt") == 2
        node = custom_nodes(proto)[0]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"slab" and attrs["eps"] > 0
    # a fresh interpreter, where onnx has never heard of the schema, still accepts the file
    check = "import onnx, sys; onnx.checker.check_model(sys.argv[1], full_check=True); print('ok')"
    proc = subprocess.run([sys.executable, "-c", check, str(out)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_trt_variant_on_onnx_runtime_needs_the_library(trt_export, ort_ops_library, monkeypatch, capsys):
    out, argv = trt_export
    if not out.exists():
        assert cli.main(argv) == 0
    import slab_edge.runtime.custom_ops as runtime_custom_ops
    from slab_edge.runtime import load

    with load(out, threads=1) as session:  # finds the built library
        assert session.custom_op_library == ort_ops_library
        assert np.isfinite(session.run(np.zeros((1, 3, 224, 224), np.float32))["logits"]).all()
    monkeypatch.setattr(runtime_custom_ops, "find_library", lambda target: None)
    with pytest.raises(BackendError, match="without a function body .* needs the slab custom-op library"):
        load(out, threads=1)
    capsys.readouterr()
    assert cli.main(["bench", str(out), "--iters", "1", "--warmup", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs the slab custom-op library" in err and "\n" not in err


def test_custom_ops_need_the_dynamo_exporter_and_sla_layers(zoo_exports, tmp_path):
    prepared, _ = zoo_exports.get("slab_deit_tiny_patch16_224")
    with pytest.raises(InputError, match="needs the dynamo exporter"):
        export_model(prepared, tmp_path / "a.onnx", exporter="torchscript", custom_ops="ort")
    with pytest.raises(InputError, match="unknown custom-op variant"):
        export_model(prepared, tmp_path / "a.onnx", custom_ops="tensorrt")
    softmax, _ = zoo_exports.get("deit_tiny_prepbn_patch16_224")
    with pytest.raises(InputError, match="no SLA core was fused"):
        export_model(softmax, tmp_path / "b.onnx", custom_ops="ort", parity=False)
    assert not list(tmp_path.iterdir())  # nothing half-written
