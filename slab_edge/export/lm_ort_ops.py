"""SLAB-LM graphs on ONNX Runtime's recurrent contrib ops (`slab-edge export-lm --ops ort`).

ONNX Runtime >= 1.25.1 has two operators for recurrent token mixers, with CPU and CUDA kernels
(com.microsoft domain, opset 1; 1.25.0 and older lack them):

    LinearAttention(query, key, value, past_state, decay) -> (output, present_state)
        query, key [B, T, H * d_k], value [B, T, H * d_v] (heads packed into the last axis),
        state [B, H, d_k, d_v]; update_rule "linear":  S_t = S_{t-1} + k_t^T v_t
                                     update_rule "gated":   S_t = Diag(exp(g_t)) S_{t-1} + k_t^T v_t
        output o_t = scale * q_t S_t (the state after token t), decay g [B, T, H * d_k] in log space.
    CausalConvWithState(input, weight, bias, past_state) -> (output, present_state)
        channels first: input [B, C, T], weight [C, 1, W], bias [C], state [B, C, W-1] = the last W-1
        inputs, oldest first (our conv state exactly).

How each SLAB-LM mixer maps onto them (verified against slab_edge/ops in tests/export/test_lm_ort_ops.py):
    GLA   LinearAttention, gated rule: decay = GLA's log gate per key channel, scale = GLA's scale
          (d_head_k^-1/2). The state S [B, H, d_k, d_v] is the standard export's.
    SLA   LinearAttention, linear rule, scale 1, on ReLU(q), ReLU(k) and [v, 1]: a ones column appended
          to every head's values makes the op carry the normalizer z = sum k inside its state, and its last
          output column is q_t . z_t. So S and z travel as ONE state "Sz" [B, H, d, d + 1] (S in
          [..., :d], z in [..., d]) and o_t = num / (q_t . z_t + eps), the division after the op.
          The short conv on v runs through CausalConvWithState with the conv state [B, C, W-1].
    softmax  unchanged: the standard KV-cache graph (layers are swapped one by one, so a hybrid model
          keeps its softmax layers' KV caches beside the linear layers' recurrent states).

In PyTorch the two ops are `torch.ops.slab_ort.linear_attention` / `.causal_conv_with_state`, whose CPU
implementations are the op definitions written with slab_edge.ops (so a swapped model runs, and is tested,
in PyTorch too); the ONNX exporter translates each into one com.microsoft node (TRANSLATIONS).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slab_edge.layers.causal_sla import CausalSimplifiedLinearAttention
from slab_edge.layers.gla import GatedLinearAttention
from slab_edge.ops.causal_sla import causal_conv1d
from slab_edge.ops.gla import gla_recurrent

__all__ = [
    "MIN_ONNXRUNTIME",
    "OPS",
    "TRANSLATIONS",
    "OrtCausalSLA",
    "OrtGatedLinearAttention",
    "causal_conv_with_state",
    "linear_attention",
    "ort_ops_metadata",
    "ort_ops_model",
    "to_graph_state",
]

#: export-lm --ops choices: standard ONNX ops only (default), or ONNX Runtime's recurrent contrib ops
OPS = ("standard", "ort")
#: the first ONNX Runtime release with LinearAttention and CausalConvWithState (1.25.0 lacks them)
MIN_ONNXRUNTIME = "1.25.1"
CONTRIB_DOMAIN = "com.microsoft"
UPDATE_RULES = ("linear", "gated")


# ---------------------------------------------------------------------------------------------------------
# The two contrib ops in PyTorch: definitions (CPU implementations) and shapes for torch.export


@torch.library.custom_op("slab_ort::linear_attention", mutates_args=())
def linear_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    past_state: torch.Tensor,
    decay: torch.Tensor | None,
    num_heads: int,
    update_rule: str,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """com.microsoft.LinearAttention with q_num_heads = kv_num_heads = num_heads.

    query, key [B, T, H * d_k], value [B, T, H * d_v], past_state [B, H, d_k, d_v], decay [B, T, H * d_k]
    (log space; "gated" only) -> (output [B, T, H * d_v], present_state [B, H, d_k, d_v]).
    Defined as the token-by-token recurrence (the "linear" rule is the "gated" one with zero log decay).
    """
    if update_rule not in UPDATE_RULES:
        raise ValueError(f"update_rule must be one of {UPDATE_RULES}, got {update_rule!r}")
    b, t, _ = query.shape
    q, k, v = (x.reshape(b, t, num_heads, -1) for x in (query, key, value))  # [B, T, H, *]
    g = decay.reshape(q.shape) if update_rule == "gated" else torch.zeros_like(q)
    out, state = gla_recurrent(q, k, v, g, scale, past_state, output_final_state=True)
    return out.reshape(b, t, -1), state.to(past_state.dtype)


@linear_attention.register_fake
def _linear_attention_fake(query, key, value, past_state, decay, num_heads, update_rule, scale):
    return query.new_empty(*query.shape[:2], value.shape[-1]), torch.empty_like(past_state)


@torch.library.custom_op("slab_ort::causal_conv_with_state", mutates_args=())
def causal_conv_with_state(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, past_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """com.microsoft.CausalConvWithState, 1-D, channels first, no activation.

    input [B, C, T], weight [C, 1, W], bias [C], past_state [B, C, W-1] -> (output [B, C, T],
    present_state [B, C, W-1]: the last W-1 inputs of past_state followed by input).
    """
    out, state = causal_conv1d(input.transpose(1, 2), weight, bias, past_state, output_final_state=True)
    return out.transpose(1, 2).contiguous(), state.contiguous()


@causal_conv_with_state.register_fake
def _causal_conv_with_state_fake(input, weight, bias, past_state):
    return torch.empty_like(input), torch.empty_like(past_state)


# ---------------------------------------------------------------------------------------------------------
# ONNX translations: one com.microsoft node per op


@functools.cache
def _contrib_ops() -> dict[str, Any]:
    """onnxscript Ops for the two contrib ops (the onnx package has no schema for them: declare it here)."""
    from onnx.defs import OpSchema
    from onnxscript import values

    param, optional = OpSchema.FormalParameter, OpSchema.FormalParameterOption.Optional
    floats = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    opset = values.Opset(CONTRIB_DOMAIN, 1)

    def attribute(name: str, kind, required: bool = False):
        return OpSchema.Attribute(name, kind, "", required=required)

    attention = OpSchema(
        "LinearAttention",
        CONTRIB_DOMAIN,
        1,
        inputs=[
            param("query", "T"),
            param("key", "T"),
            param("value", "T"),
            param("past_state", "S", param_option=optional),
            param("decay", "T", param_option=optional),
        ],
        outputs=[param("output", "T"), param("present_state", "S")],
        type_constraints=[("T", floats, ""), ("S", floats, "")],
        attributes=[
            attribute("q_num_heads", OpSchema.AttrType.INT, required=True),
            attribute("kv_num_heads", OpSchema.AttrType.INT, required=True),
            attribute("update_rule", OpSchema.AttrType.STRING),
            attribute("scale", OpSchema.AttrType.FLOAT),
        ],
    )
    conv = OpSchema(
        "CausalConvWithState",
        CONTRIB_DOMAIN,
        1,
        inputs=[
            param("input", "T"),
            param("weight", "T"),
            param("bias", "T", param_option=optional),
            param("past_state", "T", param_option=optional),
        ],
        outputs=[param("output", "T"), param("present_state", "T")],
        type_constraints=[("T", floats, "")],
    )
    return {s.name: values.Op(opset, s.name, s) for s in (attention, conv)}


def _linear_attention_onnx(query, key, value, past_state, decay, num_heads: int, update_rule: str, scale):
    op = _contrib_ops()["LinearAttention"]
    inputs = (query, key, value, past_state) + ((decay,) if update_rule == "gated" else ())
    attrs = {"q_num_heads": num_heads, "kv_num_heads": num_heads, "update_rule": update_rule}
    return op(*inputs, **attrs, scale=float(scale))


def _causal_conv_with_state_onnx(input, weight, bias, past_state):
    return _contrib_ops()["CausalConvWithState"](input, weight, bias, past_state)


#: torch.onnx.export(custom_translation_table=...) for graphs of an `ort_ops_model`
TRANSLATIONS = {
    torch.ops.slab_ort.linear_attention.default: _linear_attention_onnx,
    torch.ops.slab_ort.causal_conv_with_state.default: _causal_conv_with_state_onnx,
}


# ---------------------------------------------------------------------------------------------------------
# Mixers on the contrib ops (same parameters as the mixers they wrap, same token interface)


class _ContribOpMixer(nn.Module):
    """A token mixer on the contrib ops around the layer it replaces (whose parameters it uses).

    Subclasses implement forward(x [B, T, C], state, output_final_state) and, when their state layout
    differs from the wrapped layer's, graph_state.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def graph_state(self, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The wrapped layer's state in this mixer's layout (the same tensors unless overridden)."""
        return tuple(state)

    def init_state(self, batch_size: int, device=None, dtype=None) -> tuple[torch.Tensor, ...]:
        return self.graph_state(self.inner.init_state(batch_size, device=device, dtype=dtype))

    def step(
        self, x: torch.Tensor, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """One token: x [B, C] -> (y [B, C], new state); the ops take T = 1 as they take any T."""
        y, state = self.forward(x.unsqueeze(1), state, output_final_state=True)
        return y.squeeze(1), state


class OrtGatedLinearAttention(_ContribOpMixer):
    """GLA whose recurrence is LinearAttention (gated rule). [B, T, C] -> [B, T, C]; state S [B, H, d_k, d_v].

    Args:
        inner: the (folded) GLA layer whose projections, gate, output norm and output gate are used.
    """

    state_names = ("S",)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None, output_final_state: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """x [B, T, C], optional state -> (y [B, T, C], state after x or None)."""
        gla = self.inner
        (past,) = state if state is not None else self.init_state(x.shape[0], device=x.device)
        q, k, v, g = gla._project(x)  # [B, T, H, *]
        o, s = linear_attention(
            q.flatten(2), k.flatten(2), v.flatten(2), past, g.flatten(2), gla.num_heads, "gated", gla.scale
        )  # o [B, T, H * d_v]
        y = gla._output(x, o.unflatten(-1, (gla.num_heads, gla.head_v_dim)))
        return y, ((s,) if output_final_state else None)


class OrtCausalSLA(_ContribOpMixer):
    """Causal SLA on LinearAttention (linear rule, normalizer as a ones column of v) + CausalConvWithState.

    [B, T, C] -> [B, T, C]; state Sz [B, H, d, d + 1] float32 (S in [..., :d], z in [..., d]) and
    conv [B, C, W-1].

    Args:
        inner: the (folded) causal SLA layer whose qkv, conv and proj are used.
    """

    state_names = ("Sz", "conv")

    def graph_state(self, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The wrapped layer's (S, z, conv) as (Sz, conv)."""
        s, z, conv = state
        return torch.cat([s, z.unsqueeze(-1)], dim=-1), conv

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None, output_final_state: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """x [B, T, C], optional state -> (y [B, T, C], state after x or None)."""
        sla = self.inner
        b, t, c = x.shape
        sz, conv = state if state is not None else self.init_state(b, device=x.device)
        q, k, v = sla._split(x)  # [B, T, H, d]
        v_ones = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # [B, T, H, d + 1]
        q, k, v_ones = F.relu(q).flatten(2), F.relu(k).flatten(2), v_ones.flatten(2)
        o, sz = linear_attention(q, k, v_ones, sz, None, sla.num_heads, "linear", 1.0)
        o = o.unflatten(-1, (sla.num_heads, sla.head_dim + 1))  # [B, T, H, d + 1]: q S and q . z
        o = o[..., : sla.head_dim] / (o[..., sla.head_dim :] + sla.eps)  # the division after the op
        v_first = v.reshape(b, t, c).transpose(1, 2)  # [B, C, T]: the op is channels first
        local, conv = causal_conv_with_state(v_first, sla.dwc.weight, sla.dwc.bias, conv)
        o = o.reshape(b, t, c) + local.transpose(1, 2)
        return sla.proj(o), ((sz, conv) if output_final_state else None)


#: mixer type -> its contrib-op form; layers of any other type (softmax attention) stay as they are
_ORT_MIXERS = {GatedLinearAttention: OrtGatedLinearAttention, CausalSimplifiedLinearAttention: OrtCausalSLA}


def ort_ops_model(model: nn.Module) -> nn.Module:
    """A copy of a (folded) SLAB-LM whose GLA and SLA mixers run on the contrib ops, layer by layer."""
    model = copy.deepcopy(model).eval()
    for layer in model.layers:
        wrapper = _ORT_MIXERS.get(type(layer.attn))
        if wrapper is not None:
            layer.attn = wrapper(layer.attn)
    return model


def to_graph_state(model: nn.Module, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The flat state of the model that `model` was made from (ort_ops_model), in `model`'s layout."""
    out, start = [], 0
    for layer in model.layers:
        mixer = layer.attn
        wrapped = isinstance(mixer, _ContribOpMixer)
        n = len((mixer.inner if wrapped else mixer).state_names)
        piece = tuple(state[start : start + n])
        out.extend(mixer.graph_state(piece) if wrapped else piece)
        start += n
    if start != len(state):
        raise ValueError(f"state has {len(state)} tensors, the model's layers take {start}")
    return tuple(out)


def ort_ops_metadata(model: nn.Module, layout: list[dict[str, Any]]) -> dict[str, Any]:
    """Metadata of an `ort_ops_model`'s graphs; notes in `layout` what a packed SLA state holds (in place).

    A model without GLA or SLA layers (the softmax baseline) has no contrib op to run: its graphs are the
    standard ones and say so.
    """
    if not any(isinstance(layer.attn, _ContribOpMixer) for layer in model.layers):
        return {"ops": "standard"}
    for entry in layout:
        if entry["name"] == "Sz":
            d = entry["shape"][2]
            entry["doc"] = f"SLA state S in [..., :{d}] and its normalizer z in [..., {d}]"
    return {"ops": "ort", "min_onnxruntime": MIN_ONNXRUNTIME}
