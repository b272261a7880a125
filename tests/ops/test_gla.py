"""GLA ops: chunk == recurrent == naive (float64) for outputs, final states and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slab_edge.ops.gla import gla_chunk, gla_gate, gla_naive, gla_recurrent, gla_step
from slab_edge.testing import assert_rel_close

# (B, T, H, K, V, gate, initial state): a partial last chunk (with weak, strong and mixed gates), T < 64,
# exact chunks, a single token.
CASES = [
    *[(1, 150, 2, 16, 16, gate, s) for gate in ("normal", "strong", "mixed") for s in (False, True)],
    (1, 40, 2, 8, 8, "normal", False),
    (1, 40, 2, 8, 8, "strong", True),
    (2, 128, 2, 8, 8, "normal", True),
    (1, 1, 2, 8, 4, "normal", True),
]
CASE_IDS = [f"B{b}-T{t}-H{h}-K{k}-V{v}-{gate}-{'h0' if s else 'zero'}" for b, t, h, k, v, gate, s in CASES]


def make_inputs(b, t, h, k, v, gate="normal", seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, k, generator=gen)
    kk = torch.randn(b, t, h, k, generator=gen)
    vv = torch.randn(b, t, h, v, generator=gen)
    logits = torch.randn(b, t, h, k, generator=gen) * 2
    if gate == "strong":  # logsigmoid of large negatives: exp(cumulative gate) underflows within a chunk
        logits = logits - 400.0
    elif gate == "mixed":  # some channels forget everything at every step, others almost nothing
        logits = logits + torch.where(torch.arange(k) % 2 == 0, -300.0, 8.0)
    g = gla_gate(logits)
    s0 = torch.randn(b, h, k, v, generator=gen)
    return tuple(x.to(dtype) for x in (q, kk, vv, g, s0))


def run_with_grads(fn, inputs, use_state):
    """Output, final state and input gradients for random cotangents on o and the final state."""
    leaves = [x.clone().requires_grad_() for x in inputs]
    q, k, v, g, s0 = leaves
    o, s = fn(q, k, v, g, s0 if use_state else None)
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(o.shape, generator=gen).to(o.dtype)
    ds = torch.randn(s.shape, generator=gen).to(s.dtype)
    grads = torch.autograd.grad((o * do).sum() + (s * ds).sum(), leaves if use_state else leaves[:4])
    return o.detach(), s.detach(), grads


FORMS = {
    "naive": lambda q, k, v, g, s0: gla_naive(q, k, v, g, initial_state=s0),
    "chunk": lambda q, k, v, g, s0: gla_chunk(q, k, v, g, initial_state=s0, output_final_state=True),
    "chunk_parallel_states": lambda q, k, v, g, s0: gla_chunk(
        q, k, v, g, initial_state=s0, output_final_state=True, parallel_states=True
    ),
    "recurrent": lambda q, k, v, g, s0: gla_recurrent(q, k, v, g, initial_state=s0, output_final_state=True),
}


@pytest.mark.parametrize("b,t,h,k,v,gate,use_state", CASES, ids=CASE_IDS)
def test_chunk_and_recurrent_match_naive(b, t, h, k, v, gate, use_state):
    inputs = make_inputs(b, t, h, k, v, gate=gate)
    ref_o, ref_s, ref_grads = run_with_grads(FORMS["naive"], [x.double() for x in inputs], use_state)
    for form in ("chunk", "chunk_parallel_states", "recurrent"):
        o, s, grads = run_with_grads(FORMS[form], inputs, use_state)
        assert o.dtype == torch.float32
        assert_rel_close(o, ref_o, 1e-5, f"{form} output")
        assert_rel_close(s, ref_s, 1e-5, f"{form} final state")
        # Under strong decay dg is ~1e-10: a difference of much larger terms that float32 cannot resolve
        # better than ~1e-7 of the problem's gradient scale, so errors are measured against that scale.
        floor = 1e-4 * max(float(r.abs().max()) for r in ref_grads)
        for name, grad, ref in zip(["q", "k", "v", "g", "h0"], grads, ref_grads):
            assert_rel_close(grad, ref, 2e-5, f"{form} d{name}", floor=floor)


def test_naive_is_the_recurrence():
    """The naive form itself against the textbook loop S_t = diag(alpha_t) S_{t-1} + k_t^T v_t (float64)."""
    q, k, v, g, s0 = (x.double() for x in make_inputs(1, 9, 2, 4, 3))
    o, s = gla_naive(q, k, v, g, scale=0.5, initial_state=s0)
    state = s0.clone()
    for t in range(9):
        state = g[:, t].exp()[..., None] * state + k[:, t, :, :, None] * v[:, t, :, None, :]
        torch.testing.assert_close(o[:, t], 0.5 * torch.einsum("bhk,bhkv->bhv", q[:, t], state))
    torch.testing.assert_close(s, state)


def test_strong_decay_forgets_and_stays_finite():
    """With log alpha ~ -25 per step, each output depends only on its own token (state fully forgotten)."""
    q, k, v, _, s0 = make_inputs(1, 70, 1, 8, 8)
    g = gla_gate(torch.full((1, 70, 1, 8), -400.0))
    o, s = gla_chunk(q, k, v, g, initial_state=s0, output_final_state=True)
    own = (q * k).sum(-1, keepdim=True) * v * 8**-0.5
    torch.testing.assert_close(o, own, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s, k[:, -1, :, :, None] * v[:, -1, :, None, :])


def test_step_is_one_token_of_chunk():
    q, k, v, g, s0 = make_inputs(2, 1, 3, 8, 4)
    o_chunk, s_chunk = gla_chunk(q, k, v, g, initial_state=s0, output_final_state=True)
    o_step, s_step = gla_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], s0)
    torch.testing.assert_close(o_step, o_chunk[:, 0])
    torch.testing.assert_close(s_step, s_chunk)


def test_split_sequence_continues_from_state():
    q, k, v, g, _ = make_inputs(2, 100, 2, 8, 8)
    o_full, s_full = gla_chunk(q, k, v, g, output_final_state=True)
    o1, s1 = gla_chunk(q[:, :37], k[:, :37], v[:, :37], g[:, :37], output_final_state=True)
    o2, s2 = gla_chunk(q[:, 37:], k[:, 37:], v[:, 37:], g[:, 37:], initial_state=s1, output_final_state=True)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s2, s_full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size,leaf_size", [(64, 4), (64, 1), (32, 8), (64, 64), (16, 16)])
def test_chunk_sizes_agree(chunk_size, leaf_size):
    q, k, v, g, s0 = make_inputs(1, 90, 2, 8, 8, gate="mixed")
    ref, _ = gla_naive(*(x.double() for x in (q, k, v, g)), initial_state=s0.double())
    o, _ = gla_chunk(q, k, v, g, initial_state=s0, chunk_size=chunk_size, leaf_size=leaf_size)
    assert_rel_close(o, ref, 1e-5, f"C{chunk_size}-leaf{leaf_size}")


def test_chunk_size_must_be_leaf_times_power_of_two():
    q, k, v, g, _ = make_inputs(1, 8, 1, 4, 4)
    for chunk_size, leaf_size in ((48, 32), (48, 4)):
        with pytest.raises(ValueError, match="power of two"):
            gla_chunk(q, k, v, g, chunk_size=chunk_size, leaf_size=leaf_size)


def test_compute_is_fp32_under_bf16_autocast_and_half_inputs():
    q, k, v, g, s0 = make_inputs(1, 80, 2, 8, 8)
    ref, _ = gla_chunk(q, k, v, g, initial_state=s0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, s = gla_chunk(
            q.bfloat16(), k.bfloat16(), v.bfloat16(), g, initial_state=s0, output_final_state=True
        )
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert_rel_close(o.float(), ref, 3e-2, "bf16 inputs")


def test_step_core_is_fp32_under_bf16_autocast():
    """The decoding step keeps q S in float32 under autocast, as the chunk form does."""
    q, k, v, g, s0 = make_inputs(2, 1, 3, 8, 4)
    ref, ref_state = gla_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], s0 * 100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, state = gla_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], s0 * 100)
    assert torch.equal(o, ref) and torch.equal(state, ref_state)


def test_gate_is_logsigmoid_over_16():
    logits = torch.linspace(-50, 50, 11)
    torch.testing.assert_close(gla_gate(logits), F.logsigmoid(logits) / 16)
    assert (gla_gate(logits) <= 0).all()
