"""GLA layer: the paper's layer maths in float64, shapes of the paper, constant state (the mixer contract
shared with causal SLA is in test_mixer_contract.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slab_edge.layers.gla import GatedLinearAttention
from slab_edge.testing import randomize_parameters


def make_layer(dim=32, heads=4, seed=0) -> GatedLinearAttention:
    torch.manual_seed(seed)
    return randomize_parameters(GatedLinearAttention(dim, num_heads=heads, qkv_bias=True))


def layer_reference(layer: GatedLinearAttention, x: torch.Tensor) -> torch.Tensor:
    """The GLA paper's layer, token by token, in float64."""
    b, t, _ = x.shape
    h, dk, dv = layer.num_heads, layer.head_k_dim, layer.head_v_dim
    lin = {name: getattr(layer, name).double() for name in ("q_proj", "k_proj", "v_proj", "g_proj", "o_proj")}
    w1, w2 = layer.gk_proj[0].double(), layer.gk_proj[1].double()
    x = x.double()
    q = lin["q_proj"](x).reshape(b, t, h, dk)
    k = lin["k_proj"](x).reshape(b, t, h, dk)
    v = lin["v_proj"](x).reshape(b, t, h, dv)
    alpha = torch.sigmoid(w2(w1(x))).pow(1 / 16).reshape(b, t, h, dk)  # alpha = sigmoid(x W1 W2 + b)^(1/16)
    state = torch.zeros(b, h, dk, dv, dtype=torch.float64)
    outs = []
    for i in range(t):
        state = alpha[:, i, :, :, None] * state + k[:, i, :, :, None] * v[:, i, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, i] * dk**-0.5, state))
    o = torch.stack(outs, 1)  # [B, T, H, dv]
    rms = o.pow(2).mean(-1, keepdim=True).add(layer.g_norm.eps).rsqrt()
    o = (o * rms * layer.g_norm.weight.double()).reshape(b, t, h * dv)  # per-head RMSNorm
    r = F.silu(lin["g_proj"](x))  # output gate Swish(x W_r + b_r)
    return lin["o_proj"](r * o)


def test_layer_matches_the_paper():
    layer = make_layer()
    x = torch.randn(2, 75, 32)
    with torch.no_grad():
        y, _ = layer(x)
        ref = layer_reference(layer, x)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


def test_paper_shapes():
    d = 64
    layer = GatedLinearAttention(d)
    assert layer.num_heads == 4 and layer.key_dim == d // 2 and layer.value_dim == d
    assert layer.gk_proj[0].weight.shape == (16, d) and layer.gk_proj[0].bias is None  # W1: d x 16
    assert (
        layer.gk_proj[1].weight.shape == (d // 2, 16) and layer.gk_proj[1].bias is not None
    )  # W2: 16 x d_k, + b
    assert layer.g_proj.bias is not None  # r = Swish(x W_r + b_r)
    assert layer.scale == pytest.approx((d // 2 // 4) ** -0.5)
    n = sum(p.numel() for p in layer.parameters())
    assert 4 * d * d <= n <= 4.6 * d * d  # ~4 d^2 (+ the low-rank gate, biases and the norm)


def test_state_layout_is_constant_in_length():
    layer = make_layer()
    shapes = set()
    for t in (1, 9, 150):
        with torch.no_grad():
            _, state = layer(torch.randn(2, t, 32), output_final_state=True)
        shapes.add(tuple(tuple(s.shape) for s in state))
    assert shapes == {((2, 4, 4, 8),)}
    assert tuple(layer.init_state(2)[0].shape) == (2, 4, 4, 8) and layer.state_names == ("S",)


def test_bad_configuration():
    with pytest.raises(ValueError, match="divisible"):
        GatedLinearAttention(24, num_heads=5)
    with pytest.raises(ValueError, match="integers"):
        GatedLinearAttention(33, expand_k=0.5)
