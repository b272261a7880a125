"""Pure graph tools: SLA-core detection and tagging, fp16 round-trip removal, topological sort, value_info."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from slab_edge.errors import BackendError
from slab_edge.export.graph import (
    drop_untyped_value_info,
    find_sla_cores,
    merge_duplicate_producers,
    op_type_counts,
    remove_fp16_round_trips,
    reorder_erf_gelu,
    sla_core_node_names,
    tag_sla_cores,
    topological_sort,
)
from slab_edge.ops.sla import sla_core, sla_core_channels_first


def _value(name, elem=TensorProto.FLOAT, shape=(1, 2, 16, 4)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def _sla_graph(linear: bool = True, with_decoy: bool = True) -> onnx.ModelProto:
    """A hand-written SLA core (as the exporters emit it) plus a GELU-style x / sqrt(2) decoy Div."""
    nodes = [
        helper.make_node("ReduceSum", ["k", "axes"], ["ksum"], keepdims=1, name="/attn/ReduceSum"),
        helper.make_node("Transpose", ["ksum"], ["ksum_t"], perm=[0, 1, 3, 2], name="/attn/Transpose_1"),
        helper.make_node("MatMul", ["q", "ksum_t"], ["z0"], name="/attn/MatMul_z"),
        helper.make_node("Add", ["z0", "eps"], ["z"], name="/attn/Add"),
        helper.make_node("Transpose", ["k"], ["k_t"], perm=[0, 1, 3, 2], name="/attn/Transpose_2"),
    ]
    if linear:
        nodes += [
            helper.make_node("MatMul", ["k_t", "v"], ["kv"], name="/attn/MatMul_kv"),
            helper.make_node("MatMul", ["q", "kv"], ["num"], name="/attn/MatMul_out"),
        ]
    else:
        nodes += [
            helper.make_node("MatMul", ["q", "k_t"], ["qk"], name="/attn/MatMul_qk"),
            helper.make_node("MatMul", ["qk", "v"], ["num"], name="/attn/MatMul_out"),
        ]
    nodes.append(helper.make_node("Div", ["num", "z"], ["out"], name="/attn/Div"))
    if with_decoy:
        nodes += [
            helper.make_node("MatMul", ["out", "w"], ["h"], name="/mlp/fc1/MatMul"),
            helper.make_node("Div", ["h", "sqrt2"], ["h2"], name="/mlp/act/Div"),
        ]
    inits = [
        helper.make_tensor("axes", TensorProto.INT64, [1], [-2]),
        helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-6]),
        helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4).ravel().tolist()),
        helper.make_tensor("sqrt2", TensorProto.FLOAT, [], [2**0.5]),
    ]
    output = "h2" if with_decoy else "out"
    graph = helper.make_graph(
        nodes, "sla", [_value("q"), _value("k"), _value("v")], [_value(output)], initializer=inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("linear", [True, False], ids=["linear-order", "quadratic-order"])
def test_find_and_tag_sla_core(linear):
    model = _sla_graph(linear)
    cores = find_sla_cores(model)
    assert len(cores) == 1
    assert {n.op_type for n in cores[0]} == {"Div", "Add", "MatMul", "Transpose", "ReduceSum"}
    assert len(cores[0]) == 8  # every core node, and neither the decoy Div nor fc1
    names = tag_sla_cores(model)
    assert all(n.startswith("/attn/sla_core/") for n in names)
    assert "/mlp/act/Div" not in sla_core_node_names(model)
    assert tag_sla_cores(model) == names  # idempotent
    onnx.checker.check_model(model, full_check=True)


def test_no_core_without_reduce_sum_normalizer():
    model = _sla_graph()
    for node in model.graph.node:
        if node.op_type == "ReduceSum":
            node.op_type = "ReduceMax"
    assert find_sla_cores(model) == []


class _Core(torch.nn.Module):
    def forward(self, q, k, v):
        return sla_core(torch.relu(q), torch.relu(k), v) * 2.0


class _CoreChannelsFirst(torch.nn.Module):
    """As SimplifiedLinearAttention.mix calls it: q and v transposed to channels first."""

    def forward(self, q, k, v):
        q_t, v_t = torch.relu(q).transpose(-2, -1), v.transpose(-2, -1)
        return sla_core_channels_first(q_t, torch.relu(k), v_t) * 2.0


@pytest.mark.filterwarnings("ignore")  # the TorchScript exporter's deprecation and tracer warnings
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("tokens,dim", [(16, 4), (4, 16)], ids=["linear-order", "quadratic-order"])
@pytest.mark.parametrize("core", [_Core, _CoreChannelsFirst], ids=["tokens-first", "channels-first"])
def test_exported_sla_core_is_found(exporter, tokens, dim, core):
    """What torch.onnx really emits for both SLA core forms: one core per call, MatMul-only."""
    from slab_edge.export.onnx_export import finalize_graph

    x = torch.randn(1, 2, tokens, dim)
    if exporter == "dynamo":
        proto = torch.onnx.export(core(), (x, x, x), dynamo=True, verbose=False).model_proto
    else:
        buffer = io.BytesIO()
        torch.onnx.export(core(), (x, x, x), buffer, dynamo=False)
        proto = onnx.load_from_string(buffer.getvalue())
    proto = finalize_graph(proto)
    assert len(find_sla_cores(proto)) == 1
    counts = op_type_counts(proto)
    assert counts["Einsum"] == 0 and counts["ReduceSum"] == 1 and counts["MatMul"] == 3
    assert {"MatMul", "ReduceSum", "Div"} <= {n.op_type for n in proto.graph.node if "sla_core" in n.name}


def _cast(name, inp, out, to):
    return helper.make_node("Cast", [inp], [out], to=to, name=name)


def test_remove_fp16_round_trips_keeps_fp32_between_core_nodes():
    """MatMul(fp32) -> Cast16 -> Cast32 -> Div: the Div must read the fp32 MatMul output directly, while an
    fp16 consumer of the Cast16 keeps it."""
    nodes = [
        helper.make_node("MatMul", ["a", "b"], ["m"], name="sla_core/MatMul"),
        _cast("c16", "m", "m16", TensorProto.FLOAT16),
        _cast("c32", "m16", "m32", TensorProto.FLOAT),
        helper.make_node("Div", ["m32", "a"], ["d"], name="sla_core/Div"),
        helper.make_node("Relu", ["m16"], ["r16"], name="relu16"),
    ]
    f32 = lambda n: _value(n, TensorProto.FLOAT, (2, 2))
    graph = helper.make_graph(
        nodes, "g", [f32("a"), f32("b")], [f32("d"), _value("r16", TensorProto.FLOAT16, (2, 2))]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert remove_fp16_round_trips(model) == 1
    by_name = {n.name: n for n in model.graph.node}
    assert "c32" not in by_name and "c16" in by_name
    assert list(by_name["sla_core/Div"].input) == ["m", "a"]
    onnx.checker.check_model(model, full_check=True)


def test_merge_duplicate_producers_repairs_per_consumer_casts():
    """onnxruntime < 1.32's fp16 converter writes one `<x>_cast_to_fp32` Cast per blocked consumer of an fp16
    tensor: the graph fails the SSA check until the identical copies are merged."""
    f16 = lambda n: _value(n, TensorProto.FLOAT16, (2, 2))
    f32 = lambda n: _value(n, TensorProto.FLOAT, (2, 2))
    nodes = [
        _cast("c_a", "x", "x32", TensorProto.FLOAT),
        helper.make_node("MatMul", ["x32", "x32"], ["m"], name="sla_core/MatMul"),
        _cast("c_b", "x", "x32", TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["x32"], ["s"], name="sla_core/ReduceSum", keepdims=1),
    ]
    graph = helper.make_graph(nodes, "g", [f16("x")], [f32("m"), _value("s", TensorProto.FLOAT, (1, 1))])
    graph.value_info.extend([f32("x32"), f32("x32")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(onnx.checker.ValidationError, match="SSA"):
        onnx.checker.check_model(model, full_check=True)
    assert merge_duplicate_producers(model) == 1
    assert [n.name for n in model.graph.node] == ["c_a", "sla_core/MatMul", "sla_core/ReduceSum"]
    assert [v.name for v in model.graph.value_info] == ["x32"]
    onnx.checker.check_model(model, full_check=True)
    assert merge_duplicate_producers(model) == 0


def test_merge_duplicate_producers_refuses_different_writers():
    v = lambda n: _value(n, TensorProto.FLOAT, (1,))
    nodes = [
        helper.make_node("Relu", ["x"], ["y"], name="a"),
        helper.make_node("Neg", ["x"], ["y"], name="b"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [v("x")], [v("y")]))
    with pytest.raises(BackendError, match="both write 'y'"):
        merge_duplicate_producers(model)


def test_topological_sort_and_cycle():
    nodes = [
        helper.make_node("Relu", ["y"], ["z"], name="second"),
        helper.make_node("Relu", ["x"], ["y"], name="first"),
    ]
    v = lambda n: _value(n, TensorProto.FLOAT, (1,))
    model = helper.make_model(helper.make_graph(nodes, "g", [v("x")], [v("z")]))
    topological_sort(model)
    assert [n.name for n in model.graph.node] == ["first", "second"]
    cyclic = helper.make_model(
        helper.make_graph(
            [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])],
            "g",
            [v("x")],
            [v("b")],
        )
    )
    with pytest.raises(ValueError, match="cycle"):
        topological_sort(cyclic)


def _ort_outputs(model: onnx.ModelProto, feeds: dict, optimized_path=None, optimize=True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_reorder_erf_gelu_is_exact_and_lets_onnxruntime_fuse(exporter, tmp_path):
    """The exporter's exact GELU, rewritten as (x * (erf(x/sqrt2) + 1)) * 0.5: same bits node by node, and
    ORT's GeluFusion then replaces the five element-wise nodes with one Gelu (its own erf: ~1e-7 apart)."""
    from slab_edge.export.onnx_export import torch_to_onnx

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.GELU(), torch.nn.Flatten()).eval()
    raw = torch_to_onnx(net, (3, 4, 4), exporter=exporter)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(raw)
    count = reorder_erf_gelu(rewritten)
    onnx.checker.check_model(rewritten, full_check=True)
    feeds = {"input": np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32) * 3}
    before = _ort_outputs(raw, feeds, optimize=False)[0]
    fused_out = _ort_outputs(rewritten, feeds, optimized_path=tmp_path / "opt.onnx")[0]
    fused = op_type_counts(onnx.load(str(tmp_path / "opt.onnx")))
    if count == 0:
        # an exporter that already writes the fusable form (or opset 20 Gelu) needs no rewrite
        assert fused["Gelu"] == 1 and fused["Erf"] == 0, fused
        return
    assert count == 1
    assert op_type_counts(rewritten)["Erf"] == 1  # still standard ops only
    np.testing.assert_array_equal(_ort_outputs(rewritten, feeds, optimize=False)[0], before)
    np.testing.assert_allclose(fused_out, before, rtol=1e-5, atol=1e-6)
    assert fused["Gelu"] == 1 and fused["Erf"] == 0, fused
    assert reorder_erf_gelu(rewritten) == 0  # idempotent


def test_reorder_erf_gelu_leaves_other_erf_graphs_alone():
    """An Erf chain with other constants (not GELU), or with a graph output inside, is not touched."""
    v = lambda n: _value(n, TensorProto.FLOAT, (2,))
    nodes = [
        helper.make_node("Div", ["x", "c3"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["half", "a"], ["m"]),
        helper.make_node("Mul", ["x", "m"], ["y"]),
    ]
    inits = [
        helper.make_tensor("c3", TensorProto.FLOAT, [], [3.0]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [v("x")], [v("y")], initializer=inits))
    assert reorder_erf_gelu(model) == 0
    model.graph.initializer[0].float_data[:] = [2**0.5]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(v("m"))  # 0.5 * (erf + 1) is itself a graph output: must keep its value
    assert reorder_erf_gelu(exposed) == 0
    assert reorder_erf_gelu(model) == 1
    assert [list(n.input) for n in model.graph.node][3:] == [["x", "a"], ["m", "half"]]


def test_drop_untyped_value_info_keeps_typed_entries():
    # what onnxslim leaves for the outputs of an op it has no schema for (a com.microsoft contrib op): an
    # entry with an empty type, which onnx.checker's full check rejects downstream (the --ops ort exports
    # of tests/export/test_lm_ort_ops.py pass through finalize_graph, which drops them)
    node = helper.make_node("LinearAttention", ["x", "x", "x"], ["o", "s"], domain="com.microsoft")
    relu = helper.make_node("Relu", ["o"], ["y"])
    graph = helper.make_graph([node, relu], "g", [_value("x")], [_value("y")])
    graph.value_info.extend([onnx.ValueInfoProto(name="o"), _value("s")])  # "o" has no type at all
    model = helper.make_model(graph)
    assert drop_untyped_value_info(model) == 1
    assert [vi.name for vi in model.graph.value_info] == ["s"]
    assert drop_untyped_value_info(model) == 0
