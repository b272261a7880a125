"""SLAB-LM blocks: softmax attention with RoPE + KV cache, PRepBN as in the paper's LLaMA, block folding."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from slab_edge.layers.lm_blocks import SlabLMBlock, make_lm_norm
from slab_edge.layers.norms import ProgressiveNorm, RepBN, set_progressive_schedule
from slab_edge.layers.softmax_attention import CausalSelfAttention


def softmax_reference(layer: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention with rotate-half RoPE (base 10,000), written out in float64."""
    b, t, c = x.shape
    h, d = layer.num_heads, layer.head_dim
    q, k, v = layer.qkv.double()(x.double()).reshape(b, t, 3, h, d).permute(2, 0, 3, 1, 4)
    pos = torch.arange(t, dtype=torch.float64)
    freq = 10_000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.cat([pos[:, None] * freq, pos[:, None] * freq], -1)

    def rot(u):
        return u * ang.cos() + torch.cat([-u[..., d // 2 :], u[..., : d // 2]], -1) * ang.sin()

    scores = rot(q) @ rot(k).transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c)
    return layer.proj.double()(out)


def test_softmax_attention_matches_reference():
    torch.manual_seed(0)
    layer = CausalSelfAttention(32, 4)
    x = torch.randn(2, 20, 32)
    with torch.no_grad():
        y, _ = layer(x)
    torch.testing.assert_close(y.double(), softmax_reference(layer, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prefix", [1, 6])
def test_kv_cache_prefill_chunks_and_steps_equal_full(prefix):
    torch.manual_seed(0)
    layer = CausalSelfAttention(32, 4)
    x = torch.randn(2, 15, 32)
    with torch.no_grad():
        full, _ = layer(x)
        y1, cache = layer(x[:, :prefix], output_final_state=True)
        y2, cache = layer(x[:, prefix : prefix + 4], cache, output_final_state=True)  # a chunk after a cache
        outs = [y1, y2]
        for i in range(prefix + 4, 15):
            y_i, cache = layer.step(x[:, i], cache)
            outs.append(y_i[:, None])
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-5, atol=1e-5)
    assert tuple(cache[0].shape) == (2, 4, 15, 8)  # the KV cache grows with the sequence


def test_prepbn_is_the_papers_llama_norm():
    norm = make_lm_norm("prepbn", 16)
    assert isinstance(norm, ProgressiveNorm) and isinstance(norm.ln, nn.RMSNorm)
    assert (int(norm.warmup_steps), int(norm.decay_steps)) == (10_000, 18_000)
    assert (
        (norm.repbn.alpha == 0).all()
        and (norm.repbn.bn.weight == 0).all()
        and (norm.repbn.bn.bias == 0).all()
    )
    assert norm.repbn.bn.eps == norm.ln.eps == 1e-6
    assert isinstance(make_lm_norm("rmsnorm", 16), nn.RMSNorm)
    with pytest.raises(ValueError, match="norm"):
        make_lm_norm("layernorm", 16)


def randomize_repbn(module: nn.Module, seed: int = 0) -> None:
    """Random BN statistics and affine parameters (default statistics would hide folding bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, RepBN):
                c = m.bn.num_features
                m.bn.running_mean.copy_(torch.randn(c, generator=gen))
                m.bn.running_var.copy_(torch.rand(c, generator=gen) * 2 + 0.2)
                m.bn.weight.copy_(torch.randn(c, generator=gen))
                m.bn.bias.copy_(torch.randn(c, generator=gen))
                m.alpha.copy_(torch.randn(1, generator=gen))


@pytest.mark.parametrize("attention", ["sla", "gla", "softmax"])
def test_block_fold_parity_and_deploy_structure(attention):
    torch.manual_seed(0)
    block = SlabLMBlock(32, 4, 64, attention=attention, norm="prepbn").eval()
    randomize_repbn(block)
    x = torch.randn(2, 70, 32)
    with torch.no_grad():
        ref, _ = block(x)
        block.reparameterize()
        block.reparameterize()  # idempotent
        folded, _ = block(x)
    assert isinstance(block.norm1, nn.Identity) and isinstance(block.norm2, nn.Identity)
    torch.testing.assert_close(folded, ref, rtol=1e-5, atol=1e-5)
    deploy = SlabLMBlock(32, 4, 64, attention=attention, norm="prepbn", deploy=True)
    deploy.load_state_dict(block.state_dict(), strict=True)


def test_rmsnorm_block_does_not_fold():
    block = SlabLMBlock(32, 4, 64, attention="gla", norm="rmsnorm").eval()
    block.reparameterize()
    assert isinstance(block.norm1, nn.RMSNorm) and isinstance(block.norm2, nn.RMSNorm)


def test_block_trains_through_both_progressive_branches():
    torch.manual_seed(0)
    block = SlabLMBlock(32, 4, 64, attention="gla", norm="prepbn").train()
    set_progressive_schedule(block, step=12_000)  # after the 10k warm-up: RMSNorm and RepBN mixed
    y, _ = block(torch.randn(4, 20, 32))
    y.square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
