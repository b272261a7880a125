"""Exports with the fused SLA custom op: every SLA core as ONE ONNX node `SlabLinearAttention` (domain slab).

`--custom-ops` variants (CUSTOM_OPS):
    none   the standard-op graph (MatMul / ReduceSum / Div; slab_edge.export.graph finds the cores)
    ort    the custom node, plus a model-local ONNX function of the same name and domain whose body is that
           standard-op computation in float32: ONNX Runtime with the slab custom-op library runs its kernel;
           without the library ORT inlines the function and still runs the file
    trt    the custom node alone: TensorRT's ONNX parser maps it to the plugin of that name, version
           (attribute plugin_version) and namespace (attribute plugin_namespace)

The node (slab_edge.native names it): inputs q, k [B, N, H, D] after the ReLU feature map and v [B, N, H, Dv],
one output [B, N, H, Dv], all of one dtype (float, float16 or bfloat16, accumulated in float32 inside);
attributes eps (float), plugin_version, plugin_namespace. The model is traced with `fused_sla("always")`, so
each SLA layer calls `torch.ops.slab.linear_attention`, which the dynamo exporter translates into the node.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from slab_edge.errors import BackendError, InputError
from slab_edge.native import OP_DOMAIN, OP_DOMAIN_VERSION, OP_TYPE, PLUGIN_NAMESPACE, PLUGIN_VERSION
from slab_edge.ops.sla import SLA_EPS

__all__ = [
    "CUSTOM_OPS",
    "attach_function",
    "check_custom_graph",
    "custom_nodes",
    "node_model",
    "register_schema",
    "sla_function",
    "strip_function",
    "translation_table",
]

CUSTOM_OPS = ("none", "ort", "trt")
#: I/O element types the node accepts (the custom-op library and the plugin implement each)
NODE_TYPES = ("tensor(float)", "tensor(float16)", "tensor(bfloat16)")


def register_schema() -> None:
    """Tell the onnx package about the node (idempotent): onnxscript needs a schema to emit it and
    onnx.checker then validates its inputs, type constraint and attributes. Process-wide; affects no file."""
    if onnx.defs.has(OP_TYPE, OP_DOMAIN_VERSION, OP_DOMAIN):
        return
    schema = onnx.defs.OpSchema(
        OP_TYPE,
        OP_DOMAIN,
        OP_DOMAIN_VERSION,
        "Fused simplified linear attention: (q @ (k^T v)) / (q . sum k + eps) per (batch, head), in float32.",
        inputs=[onnx.defs.OpSchema.FormalParameter(name, "T") for name in ("q", "k", "v")],
        outputs=[onnx.defs.OpSchema.FormalParameter("out", "T")],
        type_constraints=[("T", list(NODE_TYPES), "one I/O dtype")],
        attributes=[
            onnx.defs.OpSchema.Attribute("eps", onnx.defs.OpSchema.AttrType.FLOAT, "normalizer offset"),
            onnx.defs.OpSchema.Attribute("plugin_version", onnx.defs.OpSchema.AttrType.STRING, "TensorRT"),
            onnx.defs.OpSchema.Attribute("plugin_namespace", onnx.defs.OpSchema.AttrType.STRING, "TensorRT"),
        ],
    )
    onnx.defs.register_schema(schema)


def _translate(q, k, v, eps: float = SLA_EPS):
    import onnxscript

    slab = onnxscript.values.Opset(OP_DOMAIN, OP_DOMAIN_VERSION)
    return getattr(slab, OP_TYPE)(
        q, k, v, eps=eps, plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE
    )


def translation_table() -> dict:
    """torch.onnx's custom_translation_table: torch.ops.slab.linear_attention -> one fused SLA node."""
    import torch

    import slab_edge.ops.sla_fused  # noqa: F401  (defines torch.ops.slab.linear_attention)

    register_schema()
    return {torch.ops.slab.linear_attention.default: _translate}


def sla_function(opset: int) -> onnx.FunctionProto:
    """The node's meaning in standard ops (ONNX opset `opset`), as a model-local function: Q, K, V =
    float32(q, k, v) transposed to [B, H, N, D]; kv = K^T V [B, H, D, Dv]; z = Q (sum_n K)^T + eps
    [B, H, N, 1]; out = CastLike(transpose(Q kv / z), q) [B, N, H, Dv]."""
    eps = onnx.AttributeProto(name="value_float", ref_attr_name="eps", type=onnx.AttributeProto.FLOAT)
    eps_node = helper.make_node("Constant", [], ["eps"])
    eps_node.attribute.append(eps)
    nodes = [
        eps_node,
        *(helper.make_node("Cast", [x], [f"{x}32"], to=TensorProto.FLOAT) for x in ("q", "k", "v")),
        helper.make_node("Transpose", ["q32"], ["q_t"], perm=[0, 2, 1, 3]),  # [B, H, N, D]
        helper.make_node("Transpose", ["k32"], ["k_t"], perm=[0, 2, 3, 1]),  # [B, H, D, N]
        helper.make_node("Transpose", ["v32"], ["v_t"], perm=[0, 2, 1, 3]),  # [B, H, N, Dv]
        helper.make_node("MatMul", ["k_t", "v_t"], ["kv"]),  # [B, H, D, Dv]
        helper.make_node("Constant", [], ["last_axis"], value_ints=[-1]),
        helper.make_node("ReduceSum", ["k_t", "last_axis"], ["k_sum"], keepdims=1),  # [B, H, D, 1]
        helper.make_node("MatMul", ["q_t", "kv"], ["numerator"]),  # [B, H, N, Dv]
        helper.make_node("MatMul", ["q_t", "k_sum"], ["q_dot_k_sum"]),  # [B, H, N, 1]
        helper.make_node("Add", ["q_dot_k_sum", "eps"], ["denominator"]),
        helper.make_node("Div", ["numerator", "denominator"], ["out_t"]),
        helper.make_node("Transpose", ["out_t"], ["out32"], perm=[0, 2, 1, 3]),  # [B, N, H, Dv]
        helper.make_node("CastLike", ["out32", "q"], ["out"]),
    ]
    return helper.make_function(
        OP_DOMAIN,
        OP_TYPE,
        ["q", "k", "v"],
        ["out"],
        nodes,
        [helper.make_opsetid("", opset)],
        attributes=["plugin_version", "plugin_namespace"],
        attribute_protos=[helper.make_attribute("eps", SLA_EPS)],  # eps with its default
        doc_string="slab-edge fused SLA core; runs where the slab custom-op library is absent",
    )


def custom_nodes(model) -> list:
    """The SlabLinearAttention nodes of the main graph."""
    return [n for n in model.graph.node if n.domain == OP_DOMAIN and n.op_type == OP_TYPE]


def _default_opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def attach_function(model) -> None:
    """Add the node's function body to `model` (in place; replaces an earlier one)."""
    strip_function(model)
    model.functions.append(sla_function(_default_opset(model)))


def strip_function(model) -> None:
    """Remove the node's function body from `model` (in place): the TensorRT variant."""
    keep = [f for f in model.functions if (f.domain, f.name) != (OP_DOMAIN, OP_TYPE)]
    del model.functions[:]
    model.functions.extend(keep)


def node_model(
    elem_type: int = TensorProto.FLOAT,
    head_dim: int | str = "D",
    value_dim: int | str = "Dv",
    eps: float | None = SLA_EPS,
    function_body: bool = True,
    opset: int = 18,
) -> onnx.ModelProto:
    """A model of one fused SLA node: inputs q, k [B, N, H, head_dim], v [B, N, H, value_dim] of `elem_type`,
    output out [B, N, H, value_dim]; eps None leaves the attribute out (the default applies). For kernel and
    plugin tests."""
    attrs = {"plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}
    if eps is not None:
        attrs["eps"] = float(eps)
    node = helper.make_node(OP_TYPE, ["q", "k", "v"], ["out"], name="sla", domain=OP_DOMAIN, **attrs)
    io = lambda name, last: helper.make_tensor_value_info(name, elem_type, ["B", "N", "H", last])
    graph = helper.make_graph(
        [node],
        "slab_linear_attention",
        [io("q", head_dim), io("k", head_dim), io("v", value_dim)],
        [io("out", value_dim)],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(OP_DOMAIN, OP_DOMAIN_VERSION)],
    )
    model.ir_version = 10
    if function_body:
        attach_function(model)
    return model


def check_custom_graph(model, variant: str) -> int:
    """Check a custom-op export's structure: the slab opset imported, each node with its three inputs, one
    output and attributes (eps float, plugin_version, plugin_namespace), and the function body present for
    "ort" and absent for "trt". Returns the node count.

    Raises:
        InputError: no SLA core was fused (no SLA layer, or layers that do not call the fused op).
        BackendError: anything else is off.
    """
    if variant not in CUSTOM_OPS[1:]:
        raise InputError(f"custom-op variant must be one of {', '.join(CUSTOM_OPS[1:])}, got {variant!r}")
    nodes = custom_nodes(model)
    if not nodes:
        from slab_edge.export.graph import find_sla_cores

        raise InputError(
            f"no SLA core was fused: --custom-ops {variant} needs SLA layers that call the fused op "
            f"(slab_edge.ops.sla_fused); this model has {len(find_sla_cores(model))} standard-op SLA cores"
        )
    imported = {o.domain: o.version for o in model.opset_import}
    if imported.get(OP_DOMAIN) != OP_DOMAIN_VERSION:
        raise BackendError(f"custom-op export does not import opset {OP_DOMAIN} {OP_DOMAIN_VERSION}")
    for node in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        wanted = {"plugin_version": PLUGIN_VERSION.encode(), "plugin_namespace": PLUGIN_NAMESPACE.encode()}
        if len(node.input) != 3 or len(node.output) != 1 or not isinstance(attrs.get("eps"), float):
            raise BackendError(f"custom node {node.name} has {len(node.input)} inputs / attributes {attrs}")
        if any(attrs.get(k) != v for k, v in wanted.items()):
            raise BackendError(f"custom node {node.name}: plugin attributes {attrs} are not {wanted}")
    bodies = [f for f in model.functions if (f.domain, f.name) == (OP_DOMAIN, OP_TYPE)]
    if len(bodies) != (1 if variant == "ort" else 0):
        raise BackendError(f"{variant} custom-op export has {len(bodies)} function bodies for {OP_TYPE}")
    return len(nodes)
