"""The fused SLA operator's contract (torch.ops.slab.linear_attention) and the SLA layer's fused path."""

from __future__ import annotations

import pytest
import torch

from slab_edge.ops.sla import sla_reference
from slab_edge.ops.sla_fused import fused_sla, linear_attention, use_fused
from slab_edge.testing import assert_rel_close


def bnhd(b: int, n: int, h: int, d: int, dv: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, n, h, d, generator=gen).relu() for _ in range(2))
    return q, k, torch.randn(b, n, h, dv, generator=gen)


@pytest.mark.parametrize("shape", [(2, 7, 3, 5, 4), (1, 196, 3, 64, 64), (2, 1, 1, 1, 1)], ids=str)
def test_operator_matches_the_elementwise_definition(shape):
    q, k, v = bnhd(*shape)
    out = linear_attention(q, k, v, 1e-6)
    expected = sla_reference(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    assert out.shape == v.shape and out.is_contiguous()
    assert_rel_close(out.double(), expected, 1e-5, "linear_attention")
    torch.library.opcheck(linear_attention, (q, k, v, 1e-6))


def test_operator_keeps_the_io_dtype_and_computes_in_float32():
    q, k, v = (t.half() * 30 for t in bnhd(1, 300, 2, 16, 16))  # K^T V sums overflow fp16 (> 65504)
    out = linear_attention(q, k, v)
    expected = linear_attention(q.float(), k.float(), v.float())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert_rel_close(out.float(), expected, 2e-3, "fp16 I/O")


def test_fused_mode_policy():
    q, k, v = bnhd(1, 4, 1, 2, 2)
    assert not use_fused(q, k, v)  # auto: no CPU kernel is registered, the MatMul form runs
    with fused_sla("always"):
        assert use_fused(q, k, v)
    with fused_sla("never"):
        assert not use_fused(q, k, v)
    with pytest.raises(ValueError, match="fused SLA mode"), fused_sla("sometimes"):
        pass


@pytest.mark.parametrize("model_name", ["slab_deit_tiny_patch16_224", "slab_pvt_tiny"])
def test_sla_layers_give_the_same_logits_through_the_fused_operator(model_name):
    import slab_edge

    torch.manual_seed(0)
    kwargs = {"embed_dim": 48, "depth": 2} if "deit" in model_name else {"img_size": 64}
    model = slab_edge.create_model(model_name, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # zero-initialised positional encodings get values too
    x = torch.randn(2, 3, *([224, 224] if "deit" in model_name else [64, 64]))
    with torch.no_grad():
        reference = model(x)
        with fused_sla("always"):
            fused = model(x)
    assert_rel_close(fused, reference, 1e-5, model_name)
