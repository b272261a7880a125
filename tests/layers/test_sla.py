"""Simplified linear attention: core vs float64 definition, both orders, layer maths, fp32 core."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slab_edge.layers.sla import SimplifiedLinearAttention
from slab_edge.ops.sla import sla_core, sla_core_channels_first, sla_reference, use_linear_order


@pytest.mark.parametrize("n,d", [(196, 8), (5, 16), (49, 32)], ids=lambda v: str(v))
def test_core_matches_definition_in_both_orders(n, d):
    torch.manual_seed(0)
    q, k, v = F.relu(torch.randn(2, 3, n, d)), F.relu(torch.randn(2, 3, n, d)), torch.randn(2, 3, n, d)
    out = sla_core(q, k, v)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), sla_reference(q, k, v), atol=1e-5, rtol=1e-4)
    assert use_linear_order(n, d) == (n > d)
    out_t = sla_core_channels_first(q.transpose(-2, -1), k, v.transpose(-2, -1))
    assert out_t.dtype == torch.float32
    torch.testing.assert_close(out_t.transpose(-2, -1).double(), sla_reference(q, k, v), atol=1e-5, rtol=1e-4)


def test_core_stays_fp32_under_bf16_autocast():
    q, k, v = F.relu(torch.randn(1, 2, 64, 8)), F.relu(torch.randn(1, 2, 64, 8)), torch.randn(1, 2, 64, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sla_core(q.bfloat16(), k.bfloat16(), v.bfloat16())
        out_t = sla_core_channels_first(q.bfloat16().mT, k.bfloat16(), v.bfloat16().mT)
    assert out.dtype == out_t.dtype == torch.float32


def _layer_reference(layer: SimplifiedLinearAttention, x: torch.Tensor) -> torch.Tensor:
    """Straight from REFERENCE §1, per head, float64."""
    b, n, c = x.shape
    h, d = layer.num_heads, layer.head_dim
    gh, gw = layer.grid_size
    q, k, v = layer.qkv(x).double().split(c, dim=-1)
    k = k + layer.positional_encoding.double()
    q, k = F.relu(q), F.relu(k)
    out = torch.zeros(b, n, c, dtype=torch.float64)
    for i in range(h):
        sl = slice(i * d, (i + 1) * d)
        attn = sla_reference(q[..., sl], k[..., sl], v[..., sl])
        fmap = v[..., sl].reshape(b, gh, gw, d).permute(0, 3, 1, 2)
        conv = F.conv2d(fmap, layer.dwc.weight.double(), layer.dwc.bias.double(), padding=2, groups=d)
        out[..., sl] = attn + conv.permute(0, 2, 3, 1).reshape(b, n, d)
    return F.linear(out, layer.proj.weight.double(), layer.proj.bias.double())


def test_layer_matches_reference_maths_on_a_non_square_grid():
    torch.manual_seed(3)
    layer = SimplifiedLinearAttention(24, 3, grid_size=(4, 6)).eval()
    torch.nn.init.normal_(layer.positional_encoding, std=0.1)
    x = torch.randn(2, 24, 24)
    torch.testing.assert_close(layer(x, hw=(4, 6)).double(), _layer_reference(layer, x), atol=1e-5, rtol=1e-4)


def test_fixed_grid_rejects_other_sizes_and_dynamic_grid_resamples():
    layer = SimplifiedLinearAttention(16, 2, grid_size=(4, 4))
    with pytest.raises(ValueError, match="4x4 token grid"):
        layer(torch.randn(1, 36, 16), hw=(6, 6))
    layer.dynamic_size = True
    assert layer(torch.randn(1, 36, 16), hw=(6, 6)).shape == (1, 36, 16)


def test_dwc_over_all_heads_equals_the_shared_per_head_conv():
    from slab_edge.layers.sla import dwc_all_heads

    torch.manual_seed(0)
    heads, d = 3, 4
    conv = torch.nn.Conv2d(d, d, 5, padding=2, groups=d)
    v = torch.randn(2, heads * d, 6, 7)  # [B, C, H, W], channel h * d + e
    per_head = conv(v.reshape(2 * heads, d, 6, 7)).reshape(2, heads * d, 6, 7)
    weight, bias = dwc_all_heads(conv.weight, conv.bias, heads)
    merged = F.conv2d(v.to(memory_format=torch.channels_last), weight, bias, padding=2, groups=heads * d)
    torch.testing.assert_close(merged, per_head, rtol=1e-6, atol=1e-6)
