"""The contract every causal token mixer (causal SLA, GLA) keeps: prefill + steps == full forward, a state
carried across chunks, recurrent mode == chunk mode, gradients to every parameter. Each layer's own maths
against its float64 reference lives in its own test file."""

from __future__ import annotations

import pytest
import torch

from slab_edge.layers.causal_sla import CausalSimplifiedLinearAttention
from slab_edge.layers.gla import GatedLinearAttention
from slab_edge.testing import randomize_parameters

MIXERS = {
    "causal_sla": lambda: CausalSimplifiedLinearAttention(32, 4, conv_size=4, qkv_bias=True, proj_bias=True),
    "gla": lambda: GatedLinearAttention(32, num_heads=4, qkv_bias=True),
}


@pytest.fixture(params=list(MIXERS))
def layer(request):
    """A mixer of width 32 with every parameter drawn from N(0, 0.3) (biases and norms included)."""
    torch.manual_seed(0)
    return randomize_parameters(MIXERS[request.param]())


@pytest.mark.parametrize("prefix", [1, 3, 64, 70], ids=lambda p: f"prefix{p}")
def test_prefill_then_steps_equals_full_forward(layer, prefix):
    x = torch.randn(2, 90, 32)
    with torch.no_grad():
        full, _ = layer(x)
        y, state = layer(x[:, :prefix], output_final_state=True)
        outs = [y]
        for i in range(prefix, 90):
            y_i, state = layer.step(x[:, i], state)
            outs.append(y_i[:, None])
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-5, atol=1e-5)


def test_continuing_from_a_state_in_chunks(layer):
    x = torch.randn(1, 100, 32)
    with torch.no_grad():
        full, final = layer(x, output_final_state=True)
        y1, st = layer(x[:, :45], output_final_state=True)
        y2, st = layer(x[:, 45:], st, output_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), full, rtol=1e-5, atol=1e-5)
    for a, b in zip(st, final):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_recurrent_mode_equals_chunk_mode(layer):
    x = torch.randn(2, 50, 32)
    with torch.no_grad():
        chunk, _ = layer(x)
        layer.mode = "recurrent"
        rec, _ = layer(x)
    torch.testing.assert_close(rec, chunk, rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_parameter(layer):
    y, _ = layer(torch.randn(2, 70, 32))
    y.square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", ["causal_sla", "gla", "softmax"])
def test_output_linear_writes_the_mixer_output(kind):
    from slab_edge.layers.softmax_attention import CausalSelfAttention

    torch.manual_seed(0)
    make = MIXERS.get(kind, lambda: CausalSelfAttention(32, 4, qkv_bias=True))
    layer = randomize_parameters(make())
    with torch.no_grad():
        layer.output_linear.weight.zero_()
        if layer.output_linear.bias is not None:
            layer.output_linear.bias.zero_()
        out, _ = layer(torch.randn(2, 9, 32))
    assert torch.count_nonzero(out) == 0  # nothing reaches the residual stream but through it
