"""The ONNX Runtime custom-op library (csrc/ort_custom_ops.cc with the CPU kernel csrc/sla_attention_cpu.h) on
one-node models, against the op's PyTorch reference (slab_edge.ops.sla_fused.linear_attention_reference)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from onnx import TensorProto

from slab_edge.errors import BackendError
from slab_edge.export.custom_ops import node_model
from slab_edge.export.onnx_export import ort_session
from slab_edge.ops.sla_fused import linear_attention_reference
from slab_edge.testing import SLA_KERNEL_TOLERANCE, SLA_NODE_TYPES, ort_node_events, run_sla_node, sla_inputs

#: (B, N, H, D, Dv): odd token counts and head dims, Dv != D, B * H = 1, the zoo's 64 / 32 / 16, the maximum
SHAPES = [
    (1, 1, 1, 8, 8),
    (2, 7, 3, 12, 5),
    (1, 1000, 1, 64, 64),
    (1, 7, 1, 32, 64),
    (2, 1000, 3, 64, 32),
    (2, 196, 3, 16, 16),
    (1, 50, 2, 128, 128),
]


def shape_id(shape) -> str:
    return "B{}-N{}-H{}-D{}-Dv{}".format(*shape)


def make_session(model, library, threads: int = 2, profile_prefix=None):
    return ort_session(model, threads, custom_op_library=library, profile_prefix=profile_prefix)


def rel_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("dtype", list(SLA_NODE_TYPES), ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_kernel_matches_the_reference(ort_ops_library, shape, dtype):
    q, k, v = sla_inputs(*shape, dtype=dtype)
    session = make_session(node_model(SLA_NODE_TYPES[dtype], function_body=False), ort_ops_library)
    out = run_sla_node(session, q, k, v)
    expected = linear_attention_reference(q.float(), k.float(), v.float())  # the same (rounded) inputs
    assert out.dtype == dtype and out.shape == v.shape
    assert torch.isfinite(out.float()).all()
    assert rel_error(out, expected) <= SLA_KERNEL_TOLERANCE[dtype]


def test_thread_count_does_not_change_the_result(ort_ops_library):
    """The work split depends on the shape only, so results are bitwise equal on 1 and 2 threads."""
    q, k, v = sla_inputs(3, 1000, 2, 64, 64)
    model = node_model(function_body=False)
    one, two = (run_sla_node(make_session(model, ort_ops_library, threads=t), q, k, v) for t in (1, 2))
    assert torch.equal(one, two)


@pytest.mark.parametrize("eps", [0.5, None], ids=["eps=0.5", "eps-default"])
def test_eps_attribute_and_its_default(ort_ops_library, eps):
    q, k, v = sla_inputs(1, 20, 2, 8, 8)
    q = q * 1e-4  # a small normalizer, so eps matters
    out = run_sla_node(make_session(node_model(eps=eps, function_body=False), ort_ops_library), q, k, v)
    expected = linear_attention_reference(q, k, v, 1e-6 if eps is None else eps)
    assert rel_error(out, expected) <= SLA_KERNEL_TOLERANCE[torch.float32]


def test_fp16_io_accumulates_in_fp32(ort_ops_library):
    q, k, v = (t.half() * 30 for t in sla_inputs(1, 300, 2, 16, 16))  # K^T V sums overflow fp16 (> 65504)
    out = run_sla_node(
        make_session(node_model(TensorProto.FLOAT16, function_body=False), ort_ops_library), q, k, v
    )
    assert torch.isfinite(out).all()
    assert rel_error(out, linear_attention_reference(q.float(), k.float(), v.float())) <= 2e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_conversions_are_exact_and_round_to_nearest_even(ort_ops_library, dtype):
    """Every 16-bit pattern through the kernel's load and store: with eps = 0 and q = k = 1, two tokens give
    out = (v0 + v1) / 2, exact in float32; v1 = v0 returns every value (subnormals, inf, nan) unchanged,
    v1 = the next pattern lands on midpoints, which must round to nearest even like torch. Bitwise, except
    that a zero may lose its sign."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)  # all 65536 patterns
    first = bits.view(dtype).reshape(512, 1, 1, 128)
    session = make_session(node_model(SLA_NODE_TYPES[dtype], eps=0.0, function_body=False), ort_ops_library)
    ones = torch.ones(512, 2, 1, 1, dtype=dtype)
    for second in (first, (bits + 1).view(dtype).reshape(512, 1, 1, 128)):
        v = torch.cat([first, second], dim=1)  # [512, 2, 1, 128]
        out = run_sla_node(session, ones, ones, v)[:, :1]  # both tokens hold the same mean
        expected = ((first.float() + second.float()) / 2).to(dtype)
        nan = expected.float().isnan()
        assert torch.equal(out.float().isnan(), nan)
        same_bits = out.view(torch.int16) == expected.view(torch.int16)
        zeros = (out.float() == 0) & (expected.float() == 0)  # sums start at +0: -0 + -0 comes out +0
        assert bool((same_bits | zeros | nan).all())


def shapeless(model):
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.ClearField("shape")
    return model


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (((2, 5, 3), (2, 5, 3), (2, 5, 3)), r"q must be \[B, N, H, D\], got rank 3 \[2, 5, 3\]"),
        (
            ((1, 5, 2, 8), (1, 5, 2, 4), (1, 5, 2, 8)),
            r"q \[1, 5, 2, 8\] and k \[1, 5, 2, 4\] must have the same",
        ),
        (
            ((1, 5, 2, 8), (1, 5, 2, 8), (1, 6, 2, 8)),
            r"v \[1, 6, 2, 8\] must match q \[1, 5, 2, 8\] in B, N and H",
        ),
        (((1, 5, 2, 129), (1, 5, 2, 129), (1, 5, 2, 8)), r"head dims D = 129, Dv = 8 must be in \[1, 128\]"),
    ],
    ids=["rank", "k-shape", "v-tokens", "head-dim"],
)
def test_bad_shapes_fail_with_one_line(ort_ops_library, shapes, message):
    session = make_session(shapeless(node_model(function_body=False)), ort_ops_library)
    feeds = {name: np.ones(shape, np.float32) for name, shape in zip("qkv", shapes)}
    with pytest.raises(Exception, match=message) as info:
        session.run(None, feeds)
    assert "\n" not in str(info.value).strip()


def test_empty_batch_gives_an_empty_output(ort_ops_library):
    q, k, v = (t[:0] for t in sla_inputs(1, 4, 2, 8, 8))
    out = run_sla_node(make_session(node_model(function_body=False), ort_ops_library), q, k, v)
    assert out.shape == (0, 4, 2, 8)


def test_the_library_kernel_runs_instead_of_the_function_body(ort_ops_library, tmp_path):
    """With the library ORT runs its kernel (profile: one SlabLinearAttention event on the CPU EP); without
    it, the model's function body is inlined (no such event, its MatMuls run) and gives the same result."""
    q, k, v = sla_inputs(2, 50, 3, 16, 16)
    outputs, events = {}, {}
    for name, library in (("kernel", ort_ops_library), ("body", None)):
        session = make_session(node_model(function_body=True), library, profile_prefix=tmp_path / name)
        outputs[name] = run_sla_node(session, q, k, v)
        events[name] = ort_node_events(session.end_profiling())
    assert events["kernel"] == {("SlabLinearAttention", "CPUExecutionProvider")}
    assert ("MatMul", "CPUExecutionProvider") in events["body"]
    assert all(op != "SlabLinearAttention" for op, _ in events["body"])
    assert rel_error(outputs["kernel"], outputs["body"].float()) <= 1e-6


def test_a_runtime_older_than_the_headers_is_refused_in_one_line(tmp_path, monkeypatch):
    """The library asks the runtime for exactly its headers' ORT_API_VERSION: built against headers that
    claim API 99, this onnxruntime (API < 99) cannot serve it, and registration fails with one clear line
    instead of calling into a table that is too short."""
    from slab_edge.native import build

    headers = tmp_path / "headers"
    shutil.copytree(build.ort_include_dir(), headers)
    api = headers / "onnxruntime_c_api.h"
    api.write_text(re.sub(r"#define ORT_API_VERSION \d+", "#define ORT_API_VERSION 99", api.read_text()))
    monkeypatch.setenv(build.ORT_INCLUDE_ENV, str(headers))
    library = build.build(["ort"], out_dir=tmp_path / "lib")["ort"]
    refused = r"built for ONNX Runtime API 99 .* this runtime is \d+\.\d+"
    with pytest.raises(BackendError, match=refused) as info:
        ort_session(node_model(), custom_op_library=library)
    assert "\n" not in str(info.value)
