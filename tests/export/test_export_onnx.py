"""Every zoo model (reduced width, random folded weights) exports to a clean, labelled ONNX that ONNX Runtime
runs like PyTorch: <= 1e-4 absolute on random and real (digits) inputs, at batch 1, 2 and 3."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from _export_helpers import zoo_models

from slab_edge.export.graph import find_sla_cores, op_type_counts
from slab_edge.export.onnx_export import FP32_TOLERANCE, NORM_OPS, ort_session, parity_inputs, torch_logits
from slab_edge.runtime.metadata import decode_metadata

ZOO = zoo_models()


def test_zoo_is_registered():
    assert any(n.startswith("slab_deit") for n in ZOO), ZOO


@pytest.mark.parametrize("name", ZOO)
def test_zoo_export(zoo_exports, name):
    prepared, report = zoo_exports.get(name)
    model = onnx.load(str(report.path))

    # graph: opset, dynamic batch, SLA as MatMul/ReduceSum/Div, nothing foldable left
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    counts = op_type_counts(model)
    assert counts["Einsum"] == 0
    unfoldable = list(getattr(prepared.model, "unfoldable_norms", ()))
    if not unfoldable:
        assert all(counts[op] == 0 for op in NORM_OPS), {op: counts[op] for op in NORM_OPS}
    cores = find_sla_cores(model)
    assert len(cores) == counts["ReduceSum"]  # every ReduceSum is an SLA normalizer, every core found
    if name.startswith("slab_"):
        assert cores, "a SLAB model exported without any SLA core"
        assert report.sla_core_nodes >= 6 * len(cores)

    # metadata: the runtime contract, decodable, consistent with the graph
    meta = decode_metadata({p.key: p.value for p in model.metadata_props})
    assert meta["model"] == name and meta["task"] == "classification" and meta["precision"] == "fp32"
    assert meta["dynamic_batch"] is True
    # folded only when no norm is left; what is left (a LayerNorm baseline's norms) is counted by type
    left = Counter(type(prepared.model.get_submodule(n)).__name__ for n in unfoldable)
    assert meta["unfolded_norms"] == dict(left) and meta["folded"] is (not left)
    assert counts["LayerNormalization"] == left.get("LayerNorm", 0)
    assert meta["weights"] == "module"  # zoo_exports hands prepare_model a built module
    assert meta["input_name"] == model.graph.input[0].name
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert meta["input_size"] == dims
    assert len(meta["labels"]) == prepared.num_classes == 10
    assert {"mean", "std", "interpolation", "crop_pct", "version"} <= set(meta)

    # parity, measured at export time on random and digits inputs
    assert {p.inputs for p in report.parity} == {"random", "digits"}
    for stats in report.parity:
        assert stats.passed and stats.max_abs <= FP32_TOLERANCE, stats.line()
        assert stats.max_abs_logit > 0.05  # randomized weights: the bound is not met trivially


@pytest.mark.parametrize("name", ["slab_deit_tiny_patch16_224", "slab_swin_tiny_patch4_224"])
def test_dynamic_batch_parity(zoo_exports, name):
    if name not in ZOO:
        pytest.skip(f"{name} is not registered")
    prepared, report = zoo_exports.get(name)
    session = ort_session(report.path)
    for batch in (1, 3):
        x = parity_inputs(report.metadata, batch=batch, real=False)["random"]
        got = session.run(None, {"input": x})[0]
        assert got.shape == (batch, 10)
        assert np.abs(got - torch_logits(prepared.model, x)).max() <= FP32_TOLERANCE
