"""Causality of the CUDA training paths at slab-lm-350m's head shapes and many chunks (T 2048).

Changing inputs at positions >= cut must leave every output before the cut unchanged: ops (fla kernels vs a
perturbed copy of their own input) and whole models (fla / SDPA vs perturbed future tokens). At a chunk
boundary (1536) nothing before the cut reads the changed values, so the outputs must be bitwise equal;
inside a chunk (1500) a kernel may legitimately round differently, so the earlier change must be tiny next to
the later one (a leak moves earlier outputs as much as later ones). Also fla vs our PyTorch chunk form at
these shapes: the other GPU equivalence tests use small heads and T <= 300.

    python -m pytest tests/gpu/test_causality_gpu.py -m gpu -q     # GPU machine, fla staged (DEVICE.md)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slab_edge.ops.causal_sla import causal_linear_attn_chunk, causal_linear_attn_fla
from slab_edge.ops.gla import gla_chunk, gla_fla, gla_gate

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("needs_cuda_and_fla")]

T = 2048  # 32 chunks of 64
CUTS = {"boundary": 1536, "mid-chunk": 1500}  # cut -> largest allowed earlier / later change
MID_CHUNK_RTOL = 2e-2
# (B, H, K, V) of slab-lm-350m: GLA 4 heads, d_k = 1024 / 2 / 4, d_v = 1024 / 4; SLA 8 heads of 128
GLA_SHAPE, SLA_SHAPE = (2, 4, 128, 256), (2, 8, 128, 128)


def perturbed_after(x: torch.Tensor, cut: int) -> torch.Tensor:
    """x [B, T, ...] with every position >= cut replaced by fresh values of a similar distribution."""
    gen = torch.Generator(device="cuda").manual_seed(99)
    y = x.clone()
    fresh = torch.randn(y[:, cut:].shape, device="cuda", generator=gen)
    if bool((x >= 0).all()):  # ReLU features stay >= 0
        fresh = fresh.abs()
    elif bool((x <= 0).all()):  # log forget gates stay in GLA's range
        fresh = -fresh.abs() / 16
    y[:, cut:] = fresh.to(x.dtype)
    return y


def assert_unmoved_before(a: torch.Tensor, b: torch.Tensor, cut: int, what: str) -> None:
    """a, b [B, T, ...] outputs for inputs that differ only at positions >= cut."""
    before = (a[:, :cut] - b[:, :cut]).abs().max().item()
    after = (a[:, cut:] - b[:, cut:]).abs().max().item()
    assert after > 0, f"{what}: the change reached no later output (the check probes nothing)"
    limit = 0.0 if cut % 64 == 0 else MID_CHUNK_RTOL * after
    assert before <= limit, (
        f"{what}: change at >= {cut} moved earlier outputs by {before:.3g} (later ones by {after:.3g})"
    )


def op_inputs(attention: str, dtype: torch.dtype):
    b, h, k, v = GLA_SHAPE if attention == "gla" else SLA_SHAPE
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, kk = (torch.randn(b, T, h, k, device="cuda", generator=gen).to(dtype) for _ in range(2))
    vv = torch.randn(b, T, h, v, device="cuda", generator=gen).to(dtype)
    if attention == "sla":
        return F.relu(q), F.relu(kk), vv
    return q, kk, vv, gla_gate(torch.randn(b, T, h, k, device="cuda", generator=gen) * 2)


OPS = {
    "gla": (lambda *a: gla_fla(*a)[0], lambda *a: gla_chunk(*a)[0]),
    "sla": (lambda *a: causal_linear_attn_fla(*a)[0], lambda *a: causal_linear_attn_chunk(*a)[0]),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("attention", ["gla", "sla"])
def test_fla_op_is_causal_and_matches_pytorch_at_model_shapes(attention, dtype):
    fla_fn, chunk_fn = OPS[attention]
    inputs = op_inputs(attention, dtype)
    with torch.no_grad():
        out = fla_fn(*inputs).float()
        for cut in CUTS.values():
            for i, name in enumerate("qkvg"[: len(inputs)]):  # one input at a time
                changed = [perturbed_after(x, cut) if j == i else x for j, x in enumerate(inputs)]
                assert_unmoved_before(fla_fn(*changed).float(), out, cut, f"{name} changed")
        ref = chunk_fn(*(x.float() for x in inputs)).float()
    err, scale = (out - ref).norm().item(), ref.norm().item()
    assert err <= 3e-2 * scale, f"fla vs PyTorch chunk: normwise error {err / scale:.3g}"


@pytest.mark.parametrize("attention", ["gla", "sla", "softmax"])
def test_model_logits_before_a_change_do_not_move(attention):
    """bf16 autocast, training mode (RMSNorm), 2 layers of slab-lm-350m's width, batch 2 x 2048: the kernels
    of the training benchmark."""
    from slab_edge.models.slab_lm import create_slab_lm

    torch.manual_seed(0)
    model = create_slab_lm("350m", attention=attention, num_layers=2, context_length=T).cuda().train()
    gen = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, T), device="cuda", generator=gen)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(ids).float()
        for cut in CUTS.values():
            changed = ids.clone()
            changed[:, cut:] = torch.randint(
                0, model.config.vocab_size, (2, T - cut), device="cuda", generator=gen
            )
            assert_unmoved_before(model(changed).float(), logits, cut, f"{attention} logits")
