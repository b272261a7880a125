"""fp16-mixed and int8 QDQ variants: graph inspection (SLA core in fp32 behind explicit Casts, symmetric QDQ,
core left unquantized) and parity against PyTorch fp32 with stated tolerances."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _export_helpers import zoo_models
from onnx import TensorProto

from slab_edge.export.graph import find_sla_cores, tensor_elem_types
from slab_edge.export.onnx_export import FP16_RELATIVE_TOLERANCE, check_parity, parity_inputs, variant_path
from slab_edge.export.precision import FP32_CORE_OPS, convert_fp16, quantize_int8, sla_core_input_types

SLAB = [n for n in ("slab_deit_tiny_patch16_224", "slab_pvt_tiny", "slab_swin_tiny_patch4_224",
                    "slab_cswin_tiny_224") if n in zoo_models()]  # fmt: skip


@pytest.mark.parametrize("name", SLAB)
def test_fp16_keeps_sla_core_fp32(zoo_exports, name):
    prepared, report = zoo_exports.get(name)
    fp32 = onnx.load(str(report.path))
    fp16 = convert_fp16(fp32)
    onnx.checker.check_model(fp16, full_check=True)

    # I/O stays fp32; weights are fp16
    assert fp16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert fp16.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert sum(i.data_type == TensorProto.FLOAT16 for i in fp16.graph.initializer) > 0

    # every core's MatMul / ReduceSum / Div reads fp32 tensors; every core is still there
    core_types = sla_core_input_types(fp16)
    ops = {n.name: n.op_type for n in fp16.graph.node}
    assert {ops[n] for n in core_types} == set(FP32_CORE_OPS)
    assert all(t == [TensorProto.FLOAT] * len(t) for t in core_types.values()), core_types
    assert len(find_sla_cores(fp16)) == len(find_sla_cores(fp32)) > 0
    # ... fed from the fp16 graph through explicit Casts to float, and the rest computes in fp16
    producers = {o: n for n in fp16.graph.node for o in n.output}
    core_inputs = {i for n in fp16.graph.node if "sla_core" in n.name for i in n.input}
    casts_in = [producers[i] for i in core_inputs if i in producers and producers[i].op_type == "Cast"]
    assert casts_in and all(a.i == TensorProto.FLOAT for c in casts_in for a in c.attribute if a.name == "to")
    types = tensor_elem_types(fp16)
    other_matmuls = [n for n in fp16.graph.node if n.op_type == "MatMul" and "sla_core" not in n.name]
    assert other_matmuls and all(types[n.input[0]] == TensorProto.FLOAT16 for n in other_matmuls)

    # parity vs PyTorch fp32: max |diff| <= 1e-2 * max |logit| and top-1 agreement where decisive
    for stats in check_parity(prepared.model, fp16, parity_inputs(report.metadata), "fp16"):
        assert stats.passed, stats.line()
        assert stats.max_abs <= FP16_RELATIVE_TOLERANCE * stats.max_abs_logit
        print(f"{name} fp16 {stats.line()}")


def test_int8_qdq_symmetric_and_core_unquantized(zoo_exports):
    name = "slab_deit_tiny_patch16_224"
    prepared, report = zoo_exports.get(name)
    fp32 = onnx.load(str(report.path))
    int8 = quantize_int8(fp32, "digits", count=16)
    onnx.checker.check_model(int8, full_check=True)
    inits = {i.name: i for i in int8.graph.initializer}
    q_nodes = [n for n in int8.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert q_nodes
    for node in q_nodes:
        zero_point = inits.get(node.input[2]) if len(node.input) > 2 else None
        assert zero_point is not None and zero_point.data_type == TensorProto.INT8
        assert not np.any(onnx.numpy_helper.to_array(zero_point))  # symmetric: zero point 0
    per_channel = [n for n in q_nodes if n.op_type == "DequantizeLinear" and inits[n.input[1]].dims]
    assert per_channel, "weights should carry per-channel scales"
    producers = {o: n for n in int8.graph.node for o in n.output}
    for node in int8.graph.node:
        if "sla_core" in node.name:
            assert all(
                producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input
            )
    assert any(producers.get(n.input[0]) is not None and producers[n.input[0]].op_type == "DequantizeLinear"
               for n in int8.graph.node if n.op_type == "MatMul")  # fmt: skip
    stats = {s.inputs: s for s in check_parity(prepared.model, int8, parity_inputs(report.metadata), "int8")}
    assert np.isfinite(stats["digits"].max_abs)
    assert stats["digits"].max_abs <= 0.1 * stats["digits"].max_abs_logit, stats["digits"].line()
    print(f"{name} int8 " + "; ".join(s.line() for s in stats.values()))


def test_variant_paths(tmp_path):
    out = tmp_path / "m.onnx"
    assert variant_path(out, "fp16", single=True) == out
    assert variant_path(out, "fp32", single=False) == out
    assert variant_path(out, "fp16", single=False) == tmp_path / "m.fp16.onnx"
    assert variant_path(out, "int8", single=False) == tmp_path / "m.int8.onnx"
