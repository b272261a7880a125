"""export-lm --ops ort: ONNX Runtime's LinearAttention / CausalConvWithState vs our references, the swapped
mixers in PyTorch, the exported graphs' parity and state layout, and the errors of an ONNX Runtime without
the ops."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from _export_helpers import LMExports, check_long_prompt_and_continuation
from torch import nn

from slab_edge import cli
from slab_edge.errors import BackendError, InputError
from slab_edge.export.lm import LOGIT_TOLERANCE, export_lm
from slab_edge.export.lm_ort_ops import (
    MIN_ONNXRUNTIME,
    TRANSLATIONS,
    causal_conv_with_state,
    linear_attention,
    ort_ops_model,
    to_graph_state,
)
from slab_edge.models.slab_lm import fold_lm
from slab_edge.ops.causal_sla import causal_conv1d_naive, causal_linear_attn_naive
from slab_edge.ops.gla import gla_naive
from slab_edge.runtime import load
from slab_edge.runtime.generate import open_lm
from slab_edge.runtime.onnxruntime_session import version_tuple
from slab_edge.testing import assert_rel_close, parity_lm

#: ORT's fp32 kernels vs float64 references, relative to the output's magnitude
OP_RTOL = 2e-5


# ---------------------------------------------------------------------------------------------------------
# the contrib ops themselves: ONNX Runtime's kernels vs the definitions in slab_edge.ops


class _Op(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *inputs):
        return self.fn(*inputs)


def _one_op_session(fn, example: tuple, seq_axes: tuple, tmp_path):
    """fn exported through TRANSLATIONS: a dynamic batch, and a dynamic T at axis seq_axes[i] of input i."""
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("T", min=1, max=4096)
    dims = tuple({0: batch} if axis is None else {0: batch, axis: seq} for axis in seq_axes)
    program = torch.onnx.export(
        _Op(fn).eval(),
        example,
        dynamo=True,
        dynamic_shapes=(dims,),
        custom_translation_table=TRANSLATIONS,
        verbose=False,
    )
    assert [n.domain for n in program.model_proto.graph.node].count("com.microsoft") == 1
    path = tmp_path / "op.onnx"
    onnx.save(program.model_proto, str(path))
    return load(path, threads=1)


def _run(session, *tensors: torch.Tensor) -> list[torch.Tensor]:
    feeds = {spec.name: t.numpy() for spec, t in zip(session.inputs, tensors)}
    return [torch.from_numpy(a) for a in session.run(feeds).values()]


def test_gated_linear_attention_is_gla_with_per_key_log_decay(tmp_path):
    b, h, dk, dv, scale = 2, 3, 4, 6, 0.37
    gen = torch.Generator().manual_seed(0)

    def gated(q, k, v, s0, g):
        return linear_attention(q, k, v, s0, g, h, "gated", scale)

    def inputs(t):
        q, k, v = (torch.randn(b, t, h * d, generator=gen) for d in (dk, dk, dv))
        g = F.logsigmoid(torch.randn(b, t, h * dk, generator=gen)) / 4
        return q, k, v, torch.randn(b, h, dk, dv, generator=gen), g

    with _one_op_session(gated, inputs(5), (1, 1, 1, None, 1), tmp_path) as session:
        for t in (1, 3, 130):  # one token (decode), a few, and more than two of our 64-chunks
            q, k, v, s0, g = inputs(t)
            out, state = _run(session, q, k, v, s0, g)
            unpack = [x.double().reshape(b, t, h, -1) for x in (q, k, v, g)]
            ref_out, ref_state = gla_naive(*unpack, scale=scale, initial_state=s0.double())
            assert_rel_close(out.double(), ref_out.reshape(b, t, -1), OP_RTOL, f"output T={t}")
            assert_rel_close(state.double(), ref_state, OP_RTOL, f"state T={t}")
            # the PyTorch definition of the op (what a swapped model runs) agrees too
            torch_out, torch_state = linear_attention(q, k, v, s0, g, h, "gated", scale)
            assert_rel_close(torch_out.double(), ref_out.reshape(b, t, -1), OP_RTOL, f"torch T={t}")
            assert_rel_close(torch_state.double(), ref_state, OP_RTOL, f"torch state T={t}")


def test_linear_rule_with_a_ones_column_carries_the_sla_normalizer(tmp_path):
    b, h, d, eps = 2, 2, 5, 1e-6
    gen = torch.Generator().manual_seed(1)

    def linear(q, k, v, sz):
        return linear_attention(q, k, v, sz, None, h, "linear", 1.0)

    def inputs(t):
        q, k, v = (torch.randn(b, t, h, d, generator=gen) for _ in range(3))
        s0, z0 = torch.randn(b, h, d, d, generator=gen), torch.rand(b, h, d, generator=gen) * 3
        return q.relu(), k.relu(), v, s0, z0

    def packed(q, k, v, s0, z0):
        v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
        return q.flatten(2), k.flatten(2), v1.flatten(2), torch.cat([s0, z0.unsqueeze(-1)], dim=-1)

    with _one_op_session(linear, packed(*inputs(4)), (1, 1, 1, None), tmp_path) as session:
        for t in (1, 130):
            q, k, v, s0, z0 = inputs(t)
            out, sz = _run(session, *packed(q, k, v, s0, z0))
            out = out.reshape(b, t, h, d + 1).double()
            sla = out[..., :d] / (out[..., d:] + eps)  # the division after the op
            ref_out, (ref_s, ref_z) = causal_linear_attn_naive(
                q.double(), k.double(), v.double(), eps, (s0.double(), z0.double())
            )
            assert_rel_close(sla, ref_out, OP_RTOL, f"SLA output T={t}")
            assert_rel_close(sz[..., :d].double(), ref_s, OP_RTOL, f"S T={t}")
            assert_rel_close(sz[..., d].double(), ref_z, OP_RTOL, f"z T={t}")


def test_causal_conv_with_state_is_our_short_conv_with_its_state(tmp_path):
    b, c, width = 2, 6, 4
    gen = torch.Generator().manual_seed(2)
    weight, bias = torch.randn(c, 1, width, generator=gen), torch.randn(c, generator=gen)

    def conv(x, state):
        return causal_conv_with_state(x, weight, bias, state)

    example = (torch.randn(b, c, 5), torch.randn(b, c, width - 1))  # channels first: T is the last axis
    with _one_op_session(conv, example, (2, None), tmp_path) as session:
        for t in (1, 2, 130):  # fewer tokens than the state holds, too
            x, state = torch.randn(b, t, c, generator=gen), torch.randn(b, c, width - 1, generator=gen)
            out, new_state = _run(session, x.transpose(1, 2).contiguous(), state)
            ref = causal_conv1d_naive(x.double(), weight.double(), bias.double(), state.double())
            assert_rel_close(out.transpose(1, 2).double(), ref, OP_RTOL, f"conv T={t}")
            history = torch.cat([state, x.transpose(1, 2)], dim=-1)[..., -(width - 1) :]
            torch.testing.assert_close(new_state, history, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# the swapped model in PyTorch


@pytest.mark.parametrize("attention", ["gla", "sla", "hybrid"])
def test_contrib_op_mixers_equal_the_model_in_pytorch(attention):
    folded, _ = fold_lm(parity_lm(attention, "prepbn"))
    swapped = ort_ops_model(folded)
    kinds = [type(layer.attn).__name__ for layer in swapped.layers]
    expected = {
        "gla": ["OrtGatedLinearAttention"] * 2,
        "sla": ["OrtCausalSLA"] * 2,
        "hybrid": ["OrtCausalSLA", "CausalSelfAttention"],
    }[attention]
    assert kinds == expected
    prompt = torch.randint(0, 256, (2, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_logits, ref_state = folded.prefill(prompt)
        logits, state = swapped.prefill(prompt)
        assert_rel_close(logits, ref_logits, 1e-5, "prefill logits")
        for got, want in zip(state, to_graph_state(swapped, ref_state)):
            assert_rel_close(got, want, 1e-5, "prefill state")
        for token in prompt[:, :8].T:  # decode steps from the carried states
            ref_logits, ref_state = folded.step(token, ref_state)
            logits, state = swapped.step(token, state)
            assert_rel_close(logits, ref_logits, 1e-5, "step logits")


# ---------------------------------------------------------------------------------------------------------
# the exports

VARIANTS = [
    ("gla", "prepbn"),
    ("gla", "rmsnorm"),
    ("sla", "prepbn"),
    ("sla", "rmsnorm"),
    ("hybrid", "prepbn"),
]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return LMExports(tmp_path_factory.mktemp("lm_ort_exports"), parity_lm, ops="ort")


@pytest.mark.parametrize("attention, norm", VARIANTS)
def test_step_logits_and_64_greedy_tokens_match_pytorch(exports, attention, norm):
    _, report, _ = exports.get(attention, norm)
    assert report.prefill_max_abs <= LOGIT_TOLERANCE
    assert report.step_max_abs <= LOGIT_TOLERANCE
    assert report.greedy_match == (64, 64)
    assert report.state_max_abs <= 1e-3  # SLA's z sums 100 keys: ~1e2 in magnitude
    assert any("ops: ort (needs onnxruntime >= 1.25.1)" in line for line in report.lines())


@pytest.mark.parametrize("attention, norm", VARIANTS)
def test_graphs_run_the_contrib_ops_with_the_state_layout_in_metadata(exports, attention, norm):
    model, _, out = exports.get(attention, norm)
    per_layer = {
        "gla": [("S", ["batch", 4, 8, 16])] * 2,
        "sla": [("Sz", ["batch", 4, 16, 17]), ("conv", ["batch", 64, 3])] * 2,
        "hybrid": [
            ("Sz", ["batch", 4, 16, 17]),
            ("conv", ["batch", 64, 3]),
            ("k_cache", ["batch", 4, "past_len", 16]),
            ("v_cache", ["batch", 4, "past_len", 16]),
        ],
    }[attention]
    names = [n for n, _ in per_layer]
    layers = [0] * (len(names) // 2) + [1] * (len(names) // 2) if attention != "hybrid" else [0, 0, 1, 1]
    expected = [f"past.{i}.{n}" for i, n in zip(layers, names)]
    linear_layers = 1 if attention == "hybrid" else 2
    for file in ("prefill.onnx", "decode.onnx"):
        proto = onnx.load(str(out / file))
        ops = [n.op_type for n in proto.graph.node]
        assert ops.count("LinearAttention") == linear_layers
        assert ops.count("CausalConvWithState") == (0 if attention == "gla" else linear_layers)
        assert not {"Loop", "Scan", "BatchNormalization"} & set(ops)
        assert {n.domain for n in proto.graph.node if "Linear" in n.op_type or "Causal" in n.op_type} == {
            "com.microsoft"
        }
        assert [i.name for i in proto.graph.input] == ["input_ids", *expected]
    with open_lm(out) as lm:
        meta = lm.metadata
        assert meta["ops"] == "ort" and meta["min_onnxruntime"] == MIN_ONNXRUNTIME
        assert [(e["name"], e["shape"]) for e in meta["state_layout"]] == per_layer
        assert all("normalizer z" in e["doc"] for e in meta["state_layout"] if e["name"] == "Sz")
        state = lm.initial_state()
        assert state["past.0.S" if attention == "gla" else "past.0.Sz"].dtype == np.float32


@pytest.mark.parametrize("attention, norm", [("gla", "prepbn"), ("sla", "rmsnorm"), ("hybrid", "prepbn")])
def test_long_prompt_in_one_call_and_prompt_continuation(exports, attention, norm):
    model, _, out = exports.get(attention, norm)
    swapped = ort_ops_model(fold_lm(model)[0])
    check_long_prompt_and_continuation(model, out, functools.partial(to_graph_state, swapped))


def test_softmax_model_keeps_the_standard_graphs(tmp_path):
    # no GLA or SLA layer: nothing to put on the contrib ops (the hybrid export covers softmax layers' parity)
    meta = {"tokenizer": "none"}
    report = export_lm(
        parity_lm("softmax", "rmsnorm"), tmp_path / "s", meta=meta, graphs=("decode",), ops="ort"
    )
    assert report.metadata["ops"] == "standard" and "min_onnxruntime" not in report.metadata
    ops = {n.op_type for n in onnx.load(str(tmp_path / "s" / "decode.onnx")).graph.node}
    assert "LinearAttention" not in ops and "CausalConvWithState" not in ops


# ---------------------------------------------------------------------------------------------------------
# bad input


def test_a_state_of_the_wrong_shape_is_refused(exports):
    _, _, out = exports.get("sla", "prepbn")
    with open_lm(out) as lm:
        state = lm.initial_state()
        bad = dict(state, **{"past.0.Sz": np.zeros((1, 4, 16, 16), np.float32)})  # S without its z column
        with pytest.raises(InputError, match=r"past\.0\.Sz.*expected shape .*\[batch, 4, 16, 17\]"):
            lm.prefill([1, 2, 3], bad)
        # a standard export's state (S and z apart) does not fit either
        standard = {k: v for k, v in state.items() if not k.endswith(".Sz")}
        standard.update({f"past.{i}.S": np.zeros((1, 4, 16, 16), np.float32) for i in (0, 1)})
        standard.update({f"past.{i}.z": np.zeros((1, 4, 16), np.float32) for i in (0, 1)})
        with pytest.raises(InputError, match=r"missing \['past\.0\.Sz', 'past\.1\.Sz'\]"):
            lm.step(1, standard)


def test_an_onnxruntime_without_the_ops_gives_one_line(exports, tmp_path, monkeypatch, capsys):
    _, _, out = exports.get("gla", "prepbn")
    # an ONNX Runtime build that lacks the operator fails at load time; ORT's own error names the op
    proto = onnx.load(str(out / "decode.onnx"))
    for node in proto.graph.node:
        if node.op_type == "LinearAttention":
            node.op_type = "LinearAttentionV99"  # an operator no ONNX Runtime has
    onnx.save(proto, str(tmp_path / "decode.onnx"))
    with pytest.raises(BackendError) as err:
        load(tmp_path / "decode.onnx")
    message = str(err.value)
    assert "has no operator com.microsoft.LinearAttentionV99" in message
    assert f"the model needs onnxruntime >= {MIN_ONNXRUNTIME}" in message and "\n" not in message
    # an older ONNX Runtime is refused from the metadata before the first token
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "1.25.0")
    with pytest.raises(BackendError, match=r"needs onnxruntime >= 1\.25\.1 \(ops: ort\), this is 1\.25\.0"):
        open_lm(out)
    assert cli.main(["generate", str(out), "--prompt", "def", "--max-new-tokens", "2"]) == 2
    assert "needs onnxruntime >= 1.25.1" in capsys.readouterr().err


def test_version_tuple():
    assert version_tuple("1.25.1") == (1, 25, 1) < version_tuple("1.32.0") == (1, 32, 0)
    assert version_tuple("1.26.0.dev20260401") == (1, 26, 0)
    assert version_tuple("1.25.1rc2") == (1, 25, 1) > version_tuple("1.25")


def test_unknown_ops_value_is_refused(tmp_path):
    with pytest.raises(InputError, match="ops must be one of standard, ort"):
        export_lm(parity_lm("gla", "rmsnorm"), tmp_path / "x", meta={"tokenizer": "byte"}, ops="trt")
    assert not (tmp_path / "x").exists()
