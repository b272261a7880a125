"""Pure ONNX graph inspection and naming: op counts, SLA-core detection, scoped node names.

Works on `onnx.ModelProto` only (no torch, no backend). The SLA core is found by its data flow, not by
the exporter's naming, so every exporter and every model that calls `slab_edge.ops.sla.sla_core` (or its
channels-first form) is covered:

    numerator   = MatMul(Q, MatMul(Transpose(K), V))       linear order
                | MatMul(MatMul(Q, Transpose(K)), V)       quadratic order
                | MatMul(MatMul(Vt, K), Qt)                channels first (Vt, Qt, K from Transposes)
    denominator = Add(MatMul(Q, Transpose(ReduceSum(K))), eps)
                | Add(MatMul(ReduceSum(K), Qt), eps)       channels first
    out         = Div(numerator, denominator)

Found nodes are renamed `<scope>/sla_core/<name>`, so precision tools (fp16 block lists, INT8 exclusions,
TensorRT 10 precision constraints) select them by name.
"""

from __future__ import annotations

import ast
import math
from collections import Counter
from collections.abc import Iterable

SLA_CORE_TAG = "sla_core"

#: shape-only ops the exporters put between the core's arithmetic nodes
_SHAPE_OPS = frozenset({"Transpose", "Reshape", "Unsqueeze", "Squeeze", "Cast", "Identity"})
#: node metadata worth keeping after export (module scope); stack traces and FX dumps are dropped:
#: they hold local file paths and make the file several times larger
_KEEP_NODE_METADATA = frozenset({"namespace", "pkg.torch.onnx.name_scopes"})


def op_type_counts(model) -> Counter:
    """Counter of op types over the main graph and every subgraph (If/Loop bodies)."""
    counts: Counter = Counter()
    for node in _all_nodes(model.graph):
        counts[node.op_type] += 1
    return counts


def _all_nodes(graph) -> Iterable:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def _producers(graph) -> dict:
    return {out: node for node in graph.node for out in node.output if out}


def _constant_names(graph) -> set[str]:
    names = {init.name for init in graph.initializer}
    names.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    return names


def _skip_shape_ops(name: str, producers: dict, path: list) -> object | None:
    """Walk back from tensor `name` through shape-only ops (collected in `path`); return the next node."""
    node = producers.get(name)
    while node is not None and node.op_type in _SHAPE_OPS and node.input:
        path.append(node)
        node = producers.get(node.input[0])
    return node


def find_sla_cores(model) -> list[list]:
    """The SLA cores of the main graph, each as the list of its nodes (Div first).

    A Div counts as an SLA core output when its numerator is a MatMul fed by another MatMul with a
    transposed operand and its denominator is MatMul(., ReduceSum(.)) plus a constant. Nodes already
    named `*sla_core*` (a model may name its core explicitly) are grouped per scope as well.
    """
    graph = model.graph
    producers = _producers(graph)
    constants = _constant_names(graph)
    cores: list[list] = []
    claimed: set[int] = set()
    for div in graph.node:
        if div.op_type != "Div" or len(div.input) != 2:
            continue
        core = _match_core(div, producers, constants)
        if core:
            cores.append(core)
            claimed.update(id(n) for n in core)
    by_scope: dict[str, list] = {}
    for node in graph.node:
        if SLA_CORE_TAG in node.name and id(node) not in claimed:
            by_scope.setdefault(node.name.rsplit(SLA_CORE_TAG, 1)[0], []).append(node)
    cores.extend(by_scope.values())
    return cores


def _match_core(div, producers: dict, constants: set[str]) -> list | None:
    nodes = [div]
    # denominator: Add(MatMul(Q, T(ReduceSum(K))), eps)
    add = producers.get(div.input[1])
    if add is None or add.op_type != "Add" or len(add.input) != 2:
        return None
    const_side = [i for i in add.input if i in constants]
    tensor_side = [i for i in add.input if i not in constants]
    if len(const_side) != 1 or len(tensor_side) != 1:
        return None
    mm_z = producers.get(tensor_side[0])
    if mm_z is None or mm_z.op_type != "MatMul":
        return None
    nodes += [add, mm_z]
    reduce_path: list = []
    found_sum = False
    for operand in mm_z.input:
        path: list = []
        base = _skip_shape_ops(operand, producers, path)
        if base is not None and base.op_type == "ReduceSum":
            reduce_path = [*path, base]
            found_sum = True
            break
    if not found_sum:
        return None
    nodes += reduce_path
    # numerator: MatMul(., MatMul(., .)) with a transposed operand in the inner MatMul
    numer = producers.get(div.input[0])
    if numer is None or numer.op_type != "MatMul":
        return None
    inner = None
    for operand in numer.input:
        cand = producers.get(operand)
        if cand is not None and cand.op_type == "MatMul":
            inner = cand
            break
    if inner is None:
        return None
    transposes = [producers[i] for i in inner.input if i in producers and producers[i].op_type == "Transpose"]
    if not transposes:
        return None
    nodes += [numer, inner, *transposes]
    unique, seen = [], set()
    for node in nodes:
        if id(node) not in seen:
            seen.add(id(node))
            unique.append(node)
    return unique


def _scope_of(name: str) -> str:
    return name.rsplit("/", 1)[0] if "/" in name else ""


def tag_sla_cores(model) -> list[str]:
    """Rename every SLA-core node `<scope>/sla_core/<name>` (in place). Returns the core node names.

    Idempotent: nodes already carrying the tag keep their names.
    """
    names: list[str] = []
    for index, core in enumerate(find_sla_cores(model)):
        scope = next((_scope_of(n.name) for n in core if "/" in n.name), "") or f"sla{index}"
        for node in core:
            if SLA_CORE_TAG not in node.name:
                leaf = node.name.rsplit("/", 1)[-1] or f"{node.op_type}_{index}"
                node.name = f"{scope}/{SLA_CORE_TAG}/{leaf}"
            names.append(node.name)
    return names


def sla_core_node_names(model) -> list[str]:
    """Names of the nodes tagged as SLA core (after `tag_sla_cores`)."""
    return [node.name for node in model.graph.node if SLA_CORE_TAG in node.name]


def scope_node_names(model) -> int:
    """Prefix torch.onnx (dynamo) node names with their module scope, e.g. `blocks.0.attn/node_div`.

    The dynamo exporter names nodes after FX nodes (`node_matmul_3`) and keeps the module path only in node
    metadata, which onnxslim drops; names like `blocks.3.attn/node_matmul` make TensorRT layer names and
    profiles readable. Also drops bulky node metadata (stack traces with local paths). Returns the number
    of renamed nodes.
    """
    renamed = 0
    for node in model.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        scopes = props.get("pkg.torch.onnx.name_scopes")
        if scopes and "/" not in node.name:
            try:
                parts = [p for p in ast.literal_eval(scopes) if p]
            except (ValueError, SyntaxError):
                parts = []
            # name_scopes lists every parent module's full path, then the FX node: the last module is enough
            module = parts[-2] if len(parts) >= 2 else ""
            if module:
                node.name = f"{module}/{node.name}"
                renamed += 1
        keep = [p for p in node.metadata_props if p.key in _KEEP_NODE_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    return renamed


def tensor_elem_types(model) -> dict[str, int]:
    """{tensor name: onnx elem_type} after shape inference (inputs, outputs, value_info, initializers)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {init.name: init.data_type for init in graph.initializer}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    return types


def topological_sort(model) -> None:
    """Reorder the main graph's nodes so every node follows its producers (in place).

    Some converters (onnxruntime.transformers.float16 with keep_io_types) append the Cast nodes they add at
    the end; the ONNX checker requires topological order. Stable: independent nodes keep their order.
    """
    graph = model.graph
    available = {init.name for init in graph.initializer} | {inp.name for inp in graph.input} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        progressed = False
        rest = []
        for node in pending:
            if all(name in available for name in _node_inputs(node)):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                rest.append(node)
        if not progressed:
            raise ValueError(f"graph has a cycle or a dangling input at node {rest[0].name!r}")
        pending = rest
    _replace_nodes(graph, ordered)


def _node_inputs(node) -> set[str]:
    """Inputs of a node, including outer-scope names its subgraphs read."""
    names = set(node.input)
    for attr in node.attribute:
        subs = [attr.g] if attr.HasField("g") else []
        subs += list(attr.graphs)
        for sub in subs:
            produced = {o for n in sub.node for o in n.output} | {i.name for i in sub.input}
            produced |= {i.name for i in sub.initializer}
            for inner in sub.node:
                names.update(n for n in _node_inputs(inner) if n not in produced)
    return names


def remove_fp16_round_trips(model) -> int:
    """Drop Cast(fp32 -> fp16) -> Cast(-> fp32) pairs between fp32 nodes (in place). Returns pairs removed.

    onnxruntime's float16 converter casts the output of every blocked (fp32) node to fp16 and back before
    the next blocked node, which would round the SLA core's K^T V product and normalizer to fp16 after all.
    The consumer reads the original fp32 tensor instead; the fp16 Cast stays if fp16 nodes still read it.
    """
    import onnx

    graph = model.graph
    types = tensor_elem_types(model)
    producers = _producers(graph)
    to = lambda node: next((a.i for a in node.attribute if a.name == "to"), None)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in set(node.input):
            consumers.setdefault(name, []).append(node)
    removed = 0
    drop = set()
    for node in graph.node:
        if node.op_type != "Cast" or to(node) != onnx.TensorProto.FLOAT:
            continue
        down = producers.get(node.input[0])
        if down is None or down.op_type != "Cast" or to(down) != onnx.TensorProto.FLOAT16:
            continue
        source = down.input[0]
        if types.get(source) != onnx.TensorProto.FLOAT:
            continue
        for consumer in consumers.get(node.output[0], []):
            for i, name in enumerate(consumer.input):
                if name == node.output[0]:
                    consumer.input[i] = source
        for out in graph.output:
            if out.name == node.output[0]:
                break  # a graph output keeps its Cast
        else:
            drop.add(id(node))
            removed += 1
    still_read = {name for n in graph.node if id(n) not in drop for name in n.input}
    still_read |= {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type == "Cast" and id(node) not in drop and node.output[0] not in still_read:
            drop.add(id(node))
    _replace_nodes(graph, [n for n in graph.node if id(n) not in drop])
    return removed


def _scalar_constants(graph) -> dict[str, float]:
    """{name: value} of the graph's one-element initializers and Constant outputs."""
    from onnx import numpy_helper

    values: dict[str, float] = {}
    for init in graph.initializer:
        if math.prod(init.dims) == 1:
            values[init.name] = float(numpy_helper.to_array(init).reshape(-1)[0])
    for node in graph.node:
        if node.op_type != "Constant":
            continue
        for attr in node.attribute:
            if attr.name == "value" and math.prod(attr.t.dims) == 1:
                values[node.output[0]] = float(numpy_helper.to_array(attr.t).reshape(-1)[0])
            elif attr.name == "value_float":
                values[node.output[0]] = attr.f
    return values


def _other_input(node, name: str) -> str | None:
    """The input of a two-input node that is not `name` (None unless exactly one input is `name`)."""
    a, b = node.input
    return b if a == name and b != name else a if b == name and a != name else None


def reorder_erf_gelu(model) -> int:
    """Rewrite x * (0.5 * (erf(x / sqrt2) + 1)) as (x * (erf(x / sqrt2) + 1)) * 0.5, in place. Returns count.

    torch's exporter writes exact GELU at opset < 20 in the first form; ONNX Runtime's GeluFusion (and most
    other fusers) look for the second and then run one Gelu kernel instead of five element-wise passes. The
    two forms are bitwise equal: scaling by 0.5 is exact.
    """
    graph = model.graph
    producers = _producers(graph)
    scalars = _scalar_constants(graph)
    readers: dict[str, list] = {}  # tensor -> the nodes reading it, and None for a graph output
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for out in graph.output:
        readers.setdefault(out.name, []).append(None)

    def only_reader(name: str):
        """The node that alone reads `name` (None if several, none, or the graph output reads it)."""
        found = readers.get(name, [])
        return found[0] if len(found) == 1 else None

    close = lambda value, target: value is not None and abs(value - target) < 1e-6 * abs(target)
    rewritten = 0
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        div = producers.get(erf.input[0])
        add = only_reader(erf.output[0])
        if div is None or div.op_type != "Div" or add is None or add.op_type != "Add":
            continue
        x = div.input[0]
        if not close(scalars.get(div.input[1]), 2**0.5):
            continue
        if not close(scalars.get(_other_input(add, erf.output[0])), 1.0):
            continue
        half = only_reader(add.output[0])
        if half is None or half.op_type != "Mul":
            continue
        half_const = _other_input(half, add.output[0])
        if not close(scalars.get(half_const), 0.5):
            continue
        final = only_reader(half.output[0])
        if final is None or final.op_type != "Mul" or _other_input(final, half.output[0]) != x:
            continue
        # half: 0.5 * add -> x * add ; final: x * half -> half * 0.5 (same output name as before)
        half.input[:] = [x, add.output[0]]
        final.input[:] = [half.output[0], half_const]
        rewritten += 1
    return rewritten


def merge_duplicate_producers(model) -> int:
    """Keep one of several identical nodes that write the same output name (in place). Returns nodes dropped.

    onnxruntime < 1.32's float16 converter inserts one Cast per blocked consumer of an fp16 tensor, all
    writing `<name>_cast_to_fp32`, which breaks SSA form; 1.32 shares one Cast. Value infos are deduplicated
    the same way.

    Raises:
        BackendError: if two different nodes write the same output (a graph no merge can repair).
    """
    from slab_edge.errors import BackendError

    graph = model.graph
    first: dict[str, object] = {}
    keep, dropped = [], 0
    for node in graph.node:
        owner = next((first[o] for o in node.output if o in first), None)
        if owner is None:
            first.update({o: node for o in node.output})
            keep.append(node)
            continue
        signature = lambda n: (n.op_type, list(n.input), list(n.output), list(n.attribute))
        if signature(owner) != signature(node):
            raise BackendError(f"nodes {owner.name!r} and {node.name!r} both write {node.output[0]!r}")
        dropped += 1
    if dropped:
        _replace_nodes(graph, keep)
        seen, unique = set(), []
        for info in graph.value_info:
            if info.name not in seen:
                seen.add(info.name)
                unique.append(type(info)())
                unique[-1].CopyFrom(info)
        del graph.value_info[:]
        graph.value_info.extend(unique)
    return dropped


def drop_untyped_value_info(model) -> int:
    """Remove value_info entries without a type, or with a tensor type of no element type (in place).
    Returns how many went.

    onnxslim writes such entries for the outputs of nodes it has no schema or shape rule for (ONNX
    Runtime's com.microsoft contrib ops, the fused SLA node): onnx.checker rejects the empty element type,
    and a typeless duplicate hides the typed entry from tools that read the first one. value_info is
    optional anyway.
    """

    def typed(value) -> bool:
        kind = value.type.WhichOneof("value")
        return kind is not None and (kind != "tensor_type" or value.type.tensor_type.elem_type != 0)

    keep = [v for v in model.graph.value_info if typed(v)]
    dropped = len(model.graph.value_info) - len(keep)
    if dropped:
        copies = [type(v)() for v in keep]  # copies: the kept messages belong to the field being cleared
        for copy, value in zip(copies, keep):
            copy.CopyFrom(value)
        del model.graph.value_info[:]
        model.graph.value_info.extend(copies)
    return dropped


def copy_model(model):
    """A deep copy of an onnx.ModelProto."""
    out = type(model)()
    out.CopyFrom(model)
    return out


def _replace_nodes(graph, nodes: list) -> None:
    copies = [type(node)() for node in nodes]
    for copy, node in zip(copies, nodes):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
