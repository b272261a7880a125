"""Causal SLA ops: attention core chunk == recurrent == naive (float64), short conv forms, the whole mixer."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from slab_edge.ops.causal_sla import (
    causal_conv1d,
    causal_conv1d_naive,
    causal_conv1d_step,
    causal_linear_attn_chunk,
    causal_linear_attn_naive,
    causal_linear_attn_recurrent,
    causal_linear_attn_step,
    causal_normalizer,
    causal_sla,
    causal_sla_step,
)
from slab_edge.testing import assert_rel_close

# (B, T, H, K, V, initial state): partial last chunk, T < 64, exact chunks, one token.
CASES = [
    (1, 150, 2, 16, 16, False),
    (1, 150, 2, 16, 16, True),
    (2, 40, 3, 8, 8, False),
    (2, 128, 2, 8, 16, True),
    (1, 1, 2, 8, 4, True),
]
CASE_IDS = [f"B{b}-T{t}-H{h}-K{k}-V{v}-{'h0' if s else 'zero'}" for b, t, h, k, v, s in CASES]


def make_inputs(b, t, h, k, v, seed=0):
    """ReLU features (about half the entries zero, as after the feature map) and a non-negative state."""
    gen = torch.Generator().manual_seed(seed)
    q = F.relu(torch.randn(b, t, h, k, generator=gen))
    kk = F.relu(torch.randn(b, t, h, k, generator=gen))
    vv = torch.randn(b, t, h, v, generator=gen)
    s0 = torch.rand(b, h, k, v, generator=gen) * 5
    z0 = torch.rand(b, h, k, generator=gen) * 5
    return q, kk, vv, s0, z0


FORMS = {
    "naive": lambda q, k, v, st: causal_linear_attn_naive(q, k, v, initial_state=st),
    "chunk": lambda q, k, v, st: causal_linear_attn_chunk(q, k, v, initial_state=st, output_final_state=True),
    "recurrent": lambda q, k, v, st: causal_linear_attn_recurrent(
        q, k, v, initial_state=st, output_final_state=True
    ),
}


def run_with_grads(fn, inputs, use_state):
    leaves = [x.clone().requires_grad_() for x in inputs]
    q, k, v, s0, z0 = leaves
    o, (s, z) = fn(q, k, v, (s0, z0) if use_state else None)
    gen = torch.Generator().manual_seed(1)
    do, ds, dz = (torch.randn(x.shape, generator=gen).to(x.dtype) for x in (o, s, z))
    loss = (o * do).sum() + (s * ds).sum() + (z * dz).sum()
    grads = torch.autograd.grad(loss, leaves if use_state else leaves[:3])
    return o.detach(), s.detach(), z.detach(), grads


@pytest.mark.parametrize("b,t,h,k,v,use_state", CASES, ids=CASE_IDS)
def test_chunk_and_recurrent_match_naive(b, t, h, k, v, use_state):
    inputs = make_inputs(b, t, h, k, v)
    ref_o, ref_s, ref_z, ref_grads = run_with_grads(FORMS["naive"], [x.double() for x in inputs], use_state)
    for form in ("chunk", "recurrent"):
        o, s, z, grads = run_with_grads(FORMS[form], inputs, use_state)
        assert o.dtype == torch.float32
        assert_rel_close(o, ref_o, 1e-5, f"{form} output")
        assert_rel_close(s, ref_s, 1e-5, f"{form} S")
        assert_rel_close(z, ref_z, 1e-5, f"{form} z")
        for name, grad, ref in zip(["q", "k", "v", "S0", "z0"], grads, ref_grads):
            assert_rel_close(grad, ref, 2e-5, f"{form} d{name}")


def test_naive_is_the_definition():
    """o_t = q_t S_t / (q_t . z_t + eps) with S_t, z_t the running sums, checked token by token (float64)."""
    q, k, v, s0, z0 = (x.double() for x in make_inputs(1, 7, 2, 4, 3))
    o, _ = causal_linear_attn_naive(q, k, v, eps=1e-3, initial_state=(s0, z0))
    for t in range(7):
        s = s0 + torch.einsum("bthk,bthv->bhkv", k[:, : t + 1], v[:, : t + 1])
        z = z0 + k[:, : t + 1].sum(1)
        expected = torch.einsum("bhk,bhkv->bhv", q[:, t], s) / ((q[:, t] * z).sum(-1, keepdim=True) + 1e-3)
        torch.testing.assert_close(o[:, t], expected)


@pytest.mark.parametrize("use_state", [False, True])
def test_normalizer_is_the_running_key_sum(use_state):
    """causal_normalizer (the fla path's denominator) vs token-by-token sums, float64 reference."""
    q, k, _, _, z0 = make_inputs(2, 70, 3, 8, 4)
    z0 = z0 if use_state else None
    den, z_last = causal_normalizer(q, k, z0, eps=1e-3)
    assert den.shape == (2, 70, 3, 1) and den.dtype == z_last.dtype == torch.float32
    running = k.double().cumsum(1) + (0 if z0 is None else z0.double().unsqueeze(1))
    expected = (q.double() * running).sum(-1, keepdim=True) + 1e-3
    assert_rel_close(den, expected, 1e-6, "denominator")
    assert_rel_close(z_last, running[:, -1], 1e-6, "final key sum")


def test_zero_query_gives_zero_not_nan():
    q, k, v, _, _ = make_inputs(1, 70, 1, 4, 4)
    q[:, 10:20] = 0.0
    o, _ = causal_linear_attn_chunk(q, k, v)
    assert torch.isfinite(o).all() and (o[:, 10:20] == 0).all()


def test_step_is_one_token_of_chunk():
    q, k, v, s0, z0 = make_inputs(2, 1, 3, 8, 4)
    o_chunk, st_chunk = causal_linear_attn_chunk(q, k, v, initial_state=(s0, z0), output_final_state=True)
    o_step, st_step = causal_linear_attn_step(q[:, 0], k[:, 0], v[:, 0], (s0, z0))
    torch.testing.assert_close(o_step, o_chunk[:, 0])
    for a, b in zip(st_step, st_chunk):
        torch.testing.assert_close(a, b)


def test_compute_is_fp32_under_bf16_autocast():
    q, k, v, s0, z0 = make_inputs(1, 80, 2, 8, 8)
    ref, _ = causal_linear_attn_chunk(q, k, v, initial_state=(s0, z0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, (s, z) = causal_linear_attn_chunk(
            q.bfloat16(), k.bfloat16(), v.bfloat16(), initial_state=(s0, z0), output_final_state=True
        )
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32 and z.dtype == torch.float32
    assert_rel_close(o.float(), ref, 3e-2, "bf16 inputs")


def test_step_core_is_fp32_under_bf16_autocast():
    """The decoding step keeps q S and the normalizer in float32 under autocast, as the chunk form does."""
    q, k, v, s0, z0 = make_inputs(2, 1, 3, 8, 4)
    s0, z0 = s0 * 100, z0 * 100  # a long prompt's magnitudes: bf16 would round them visibly
    ref, ref_state = causal_linear_attn_step(q[:, 0], k[:, 0], v[:, 0], (s0, z0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, state = causal_linear_attn_step(q[:, 0], k[:, 0], v[:, 0], (s0, z0))
    assert torch.equal(o, ref) and all(torch.equal(a, b) for a, b in zip(state, ref_state))


# ---------------------------------------------------------------------------------------------------------
# Short convolution


@pytest.mark.parametrize("t,width", [(10, 4), (2, 4), (1, 4), (9, 1)], ids=lambda v: str(v))
@pytest.mark.parametrize("use_state", [False, True], ids=["zero", "state"])
def test_conv_forms_agree(t, width, use_state):
    gen = torch.Generator().manual_seed(0)
    b, ch = 2, 6
    x = torch.randn(b, t, ch, generator=gen, dtype=torch.float64)
    w = torch.randn(ch, 1, width, generator=gen, dtype=torch.float64)
    bias = torch.randn(ch, generator=gen, dtype=torch.float64)
    state = torch.randn(b, ch, width - 1, generator=gen, dtype=torch.float64) if use_state else None
    y, new_state = causal_conv1d(x, w, bias, state, output_final_state=True)
    torch.testing.assert_close(y, causal_conv1d_naive(x, w, bias, state))
    # token by token with the step form gives the same outputs and the same final conv state
    running = state if state is not None else x.new_zeros(b, ch, width - 1)
    for i in range(t):
        y_i, running = causal_conv1d_step(x[:, i], w, bias, running)
        torch.testing.assert_close(y_i, y[:, i])
    torch.testing.assert_close(running, new_state)
    # the conv state is the last W-1 inputs (zeros or earlier state where T < W-1)
    history = torch.cat(
        [state if state is not None else x.new_zeros(b, ch, width - 1), x.transpose(1, 2)], -1
    )
    torch.testing.assert_close(new_state, history[..., history.shape[-1] - (width - 1) :])


def test_conv_is_causal():
    x = torch.randn(1, 12, 3)
    w = torch.randn(3, 1, 4)
    y, _ = causal_conv1d(x, w)
    x2 = x.clone()
    x2[:, 7:] += 1.0
    y2, _ = causal_conv1d(x2, w)
    torch.testing.assert_close(y[:, :7], y2[:, :7])
    assert not torch.allclose(y[:, 7:], y2[:, 7:])


# ---------------------------------------------------------------------------------------------------------
# The whole mixer: ReLU maps + attention core + conv on v


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_causal_sla_split_and_steps_match_full(mode):
    gen = torch.Generator().manual_seed(0)
    b, t, h, d, width = 2, 90, 2, 8, 4
    q, k, v = (torch.randn(b, t, h, d, generator=gen) for _ in range(3))
    w = torch.randn(h * d, 1, width, generator=gen)
    bias = torch.randn(h * d, generator=gen)
    full, st_full = causal_sla(q, k, v, w, bias, output_final_state=True, mode=mode)
    # definition: ReLU maps, naive core, naive conv
    core, _ = causal_linear_attn_naive(F.relu(q).double(), F.relu(k).double(), v.double())
    conv = causal_conv1d_naive(v.reshape(b, t, h * d).double(), w.double(), bias.double()).reshape(b, t, h, d)
    assert_rel_close(full, core + conv, 1e-5, "mixer vs definition")
    # prefix through the parallel form, the rest token by token
    out, state = causal_sla(q[:, :61], k[:, :61], v[:, :61], w, bias, output_final_state=True, mode=mode)
    outs = [out]
    for i in range(61, t):
        o, state = causal_sla_step(q[:, i], k[:, i], v[:, i], w, bias, state)
        outs.append(o[:, None])
    assert_rel_close(torch.cat(outs, 1), full, 1e-5, "prefill + steps")
    for a, ref in zip(state, st_full):
        assert_rel_close(a, ref, 1e-5, "state")


def test_fla_mode_uses_the_fast_conv_only_without_conv_state(monkeypatch):
    """mode "fla" runs the conv through causal_conv1d_fla (fla's kernel, zero history, no state out) when
    training, and through causal_conv1d whenever a conv state goes in or comes out (prefill, decoding).
    The CUDA kernels are swapped for the chunk core and a recording conv here; their maths: tests/gpu."""
    module = importlib.import_module("slab_edge.ops.causal_sla")  # not the same-named function

    calls = []

    def recording_conv(x, weight, bias=None):
        calls.append(x.shape)
        return causal_conv1d(x, weight, bias)[0]

    monkeypatch.setitem(module._CORES, "fla", module.causal_linear_attn_chunk)
    monkeypatch.setattr(module, "causal_conv1d_fla", recording_conv)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 30, 2, 8, generator=gen) for _ in range(3))
    w, bias = torch.randn(16, 1, 4, generator=gen), torch.randn(16, generator=gen)
    reference, ref_state = causal_sla(q, k, v, w, bias, output_final_state=True, mode="chunk")
    out, none = causal_sla(q, k, v, w, bias, mode="fla")
    assert calls == [(2, 30, 16)] and none is None
    torch.testing.assert_close(out, reference)
    out, state = causal_sla(q, k, v, w, bias, output_final_state=True, mode="fla")
    out2, _ = causal_sla(q[:, :5], k[:, :5], v[:, :5], w, bias, state=state, mode="fla")
    assert len(calls) == 1  # neither call went through the state-less kernel
    torch.testing.assert_close(out, reference)
    for a, ref in zip(state, ref_state):
        torch.testing.assert_close(a, ref)
    torch.testing.assert_close(out2, causal_sla(q[:, :5], k[:, :5], v[:, :5], w, bias, state=state)[0])
