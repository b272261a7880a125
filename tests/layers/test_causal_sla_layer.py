"""Causal SLA layer: its maths in float64, constant state, modes, bad configuration (the mixer contract
shared with GLA is in test_mixer_contract.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slab_edge.layers.causal_sla import CausalSimplifiedLinearAttention
from slab_edge.ops.backend import resolve_mode
from slab_edge.testing import randomize_parameters


def make_layer(dim=32, heads=4, conv_size=4, seed=0) -> CausalSimplifiedLinearAttention:
    torch.manual_seed(seed)
    return randomize_parameters(
        CausalSimplifiedLinearAttention(dim, heads, conv_size=conv_size, qkv_bias=True, proj_bias=True)
    )


def layer_reference(layer: CausalSimplifiedLinearAttention, x: torch.Tensor) -> torch.Tensor:
    """Straight from the layer docstring, token by token and head by head, in float64."""
    b, t, c = x.shape
    h, d, w = layer.num_heads, layer.head_dim, layer.conv_size
    q, k, v = layer.qkv(x).double().split(c, dim=-1)
    q, k = F.relu(q), F.relu(k)
    weight, bias = layer.dwc.weight.double()[:, 0], layer.dwc.bias.double()  # [C, W], [C]
    out = torch.zeros(b, t, c, dtype=torch.float64)
    for i in range(t):
        for j in range(h):
            sl = slice(j * d, (j + 1) * d)
            s = torch.einsum("bsk,bsv->bkv", k[:, : i + 1, sl], v[:, : i + 1, sl])
            z = k[:, : i + 1, sl].sum(1)
            out[:, i, sl] = torch.einsum("bk,bkv->bv", q[:, i, sl], s) / (
                (q[:, i, sl] * z).sum(-1, keepdim=True) + 1e-6
            )
        # causal depthwise conv on v: tap W-1 is the current token, tap W-1-m the token m steps back
        for m in range(min(w, i + 1)):
            out[:, i] += weight[:, w - 1 - m] * v[:, i - m]
        out[:, i] += bias
    return layer.proj.double()(out)


def test_layer_matches_its_maths():
    layer = make_layer()
    x = torch.randn(2, 11, 32)
    with torch.no_grad():
        y, _ = layer(x)
        ref = layer_reference(layer, x)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


def test_state_layout_is_constant_in_length():
    layer = make_layer(dim=32, heads=4, conv_size=4)
    shapes = []
    for t in (1, 5, 130):
        with torch.no_grad():
            _, state = layer(torch.randn(3, t, 32), output_final_state=True)
        shapes.append([tuple(s.shape) for s in state])
    assert shapes[0] == shapes[1] == shapes[2] == [(3, 4, 8, 8), (3, 4, 8), (3, 32, 3)]
    assert [tuple(s.shape) for s in layer.init_state(3)] == shapes[0]
    assert layer.state_names == ("S", "z", "conv")
    assert state[0].dtype == state[1].dtype == torch.float32


def test_auto_mode_is_pytorch_chunk_on_cpu():
    assert resolve_mode("auto", torch.zeros(1)) == "chunk"
    with pytest.raises(ValueError, match="mode"):
        resolve_mode("triton", torch.zeros(1))


def test_bad_configuration():
    with pytest.raises(ValueError, match="divisible"):
        CausalSimplifiedLinearAttention(30, 4)
    with pytest.raises(ValueError, match="conv_size"):
        CausalSimplifiedLinearAttention(32, 4, conv_size=0)
