"""fla's Triton kernels vs our PyTorch chunkwise forms on CUDA: same outputs, states and gradients.

Run on the GPU machine with flash-linear-attention 0.6.0 installed:
    python -m pytest tests/gpu -m gpu -q
fla's kernels run some float32 products in TF32, so "fp32" tolerances are ~1e-3 relative, not 1e-6.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slab_edge import testing
from slab_edge.ops.causal_sla import (
    causal_linear_attn_chunk,
    causal_linear_attn_fla,
    causal_normalizer,
)
from slab_edge.ops.gla import gla_chunk, gla_fla, gla_gate

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("needs_cuda_and_fla")]

# (B, T, H, K, V): partial last chunk, exactly one chunk, shorter than a chunk. One head size, because every
# new (K, V) makes fla autotune and compile its Triton kernels again (minutes on a fresh machine).
SHAPES = [(2, 300, 4, 64, 64), (1, 64, 2, 64, 64), (2, 40, 4, 64, 64)]
SHAPE_IDS = [f"B{b}-T{t}-H{h}-K{k}-V{v}" for b, t, h, k, v in SHAPES]
# relative-to-magnitude tolerances (outputs/states, gradients)
TOL = {torch.float32: (5e-3, 1e-2), torch.bfloat16: (3e-2, 6e-2)}


def assert_rel_close(actual, expected, rtol, what, floor=1e-12):
    """slab_edge.testing.assert_rel_close on both tensors in float32."""
    testing.assert_rel_close(actual.float(), expected.float(), rtol, what, floor)


def compare(fla_fn, ref_fn, inputs, dtype, names):
    """Run fla on q/k/v in `dtype` and the reference in float32 on the same values (inputs are pre-rounded to
    `dtype`); gates and initial states stay float32 in both. Asserts outputs, states and gradients agree."""
    rtol, grad_rtol = TOL[dtype]
    results = []
    for fn, cast in ((fla_fn, dtype), (ref_fn, torch.float32)):
        leaves = [
            (x.to(cast) if name in ("q", "k", "v") else x).detach().requires_grad_()
            for name, x in zip(names, inputs)
        ]
        out, state = fn(*leaves)
        gen = torch.Generator(device="cuda").manual_seed(1)
        flat_state = state if isinstance(state, tuple) else (state,)
        cotangents = [torch.randn(t.shape, device="cuda", generator=gen) for t in (out, *flat_state)]
        loss = sum((t.float() * c).sum() for t, c in zip((out, *flat_state), cotangents))
        grads = torch.autograd.grad(loss, leaves)
        results.append((out.detach(), [s.detach() for s in flat_state], grads))
    (o, states, grads), (o_ref, states_ref, grads_ref) = results
    assert_rel_close(o, o_ref, rtol, "output")
    for i, (s, s_ref) in enumerate(zip(states, states_ref)):
        assert s.dtype == torch.float32
        assert_rel_close(s, s_ref, rtol, f"state {i}")
    # dg under strong decay is a tiny difference of large terms: measured against the gradients' scale
    floor = 1e-3 * max(float(g.abs().max()) for g in grads_ref)
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert_rel_close(g, g_ref, grad_rtol, f"d{name}", floor=floor)


def gla_inputs(b, t, h, k, v, dtype, strong=False):
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, kk = (torch.randn(b, t, h, k, device="cuda", generator=gen).to(dtype).float() for _ in range(2))
    vv = torch.randn(b, t, h, v, device="cuda", generator=gen).to(dtype).float()
    logits = torch.randn(b, t, h, k, device="cuda", generator=gen) * 2 - (300.0 if strong else 0.0)
    h0 = torch.randn(b, h, k, v, device="cuda", generator=gen)
    return q, kk, vv, gla_gate(logits), h0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_chunk_gla_matches_pytorch_chunk(shape, dtype):
    inputs = gla_inputs(*shape, dtype)
    names = ["q", "k", "v", "g", "h0"]
    compare(
        lambda q, k, v, g, h0: gla_fla(q, k, v, g, initial_state=h0, output_final_state=True),
        lambda q, k, v, g, h0: gla_chunk(q, k, v, g, initial_state=h0, output_final_state=True),
        inputs,
        dtype,
        names,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_chunk_gla_strong_gates_and_no_initial_state(dtype):
    q, k, v, g, _ = gla_inputs(2, 200, 2, 64, 64, dtype, strong=True)
    compare(
        lambda q, k, v, g: gla_fla(q, k, v, g, output_final_state=True),
        lambda q, k, v, g: gla_chunk(q, k, v, g, output_final_state=True),
        (q, k, v, g),
        dtype,
        ["q", "k", "v", "g"],
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_chunk_linear_attn_matches_pytorch_chunk(shape, dtype):
    b, t, h, k, v = shape
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, kk = (
        F.relu(torch.randn(b, t, h, k, device="cuda", generator=gen)).to(dtype).float() for _ in range(2)
    )
    vv = torch.randn(b, t, h, v, device="cuda", generator=gen).to(dtype).float()
    s0 = torch.rand(b, h, k, v, device="cuda", generator=gen)
    z0 = torch.rand(b, h, k, device="cuda", generator=gen) * 10
    compare(
        lambda q, k, v, s0, z0: causal_linear_attn_fla(
            q, k, v, initial_state=(s0, z0), output_final_state=True
        ),
        lambda q, k, v, s0, z0: causal_linear_attn_chunk(
            q, k, v, initial_state=(s0, z0), output_final_state=True
        ),
        (q, kk, vv, s0, z0),
        dtype,
        ["q", "k", "v", "h0", "z0"],
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(1, 4096, 8, 128), (3, 300, 2, 64)], ids=["B1-T4096", "B3-T300"])
@pytest.mark.parametrize("normalizer", ["triton", "fla_scan", "chunked_scan"])
def test_scan_normalizer_matches_pytorch_form(normalizer, shape, dtype, sla_pieces):
    """The fla path's normalizer (ops/causal_sla_triton.py) and the bench's earlier forms (fla's single-pass
    scans forward and reverse; the chunked-scan candidate) == causal_normalizer, gradients too."""
    if normalizer == "triton":
        from slab_edge.ops.causal_sla_triton import causal_normalizer_triton as candidate
    elif normalizer == "fla_scan":
        candidate = sla_pieces.scan_normalizer
    else:
        candidate = lambda *args: sla_pieces.scan_normalizer(*args, scan=sla_pieces.chunked_time_scan)  # noqa: E731
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k = (F.relu(torch.randn(*shape, device="cuda", generator=gen)).to(dtype) for _ in range(2))
    z0 = torch.rand(shape[0], shape[2], shape[3], device="cuda", generator=gen)
    results = []
    for fn in (candidate, causal_normalizer):
        leaves = [x.detach().requires_grad_() for x in (q, k, z0)]
        den, z_last = fn(*leaves, 1e-6)
        assert den.dtype == z_last.dtype == torch.float32
        gen = torch.Generator(device="cuda").manual_seed(1)
        loss = (den * torch.randn(den.shape, device="cuda", generator=gen)).sum() + z_last.square().sum()
        results.append((den.detach(), z_last.detach(), torch.autograd.grad(loss, leaves)))
    (den, z_last, grads), (den_ref, z_ref, grads_ref) = results
    # both accumulate in float32 over the same bf16/fp32 inputs; only the summation order differs
    assert_rel_close(den, den_ref, 1e-5, "denominator")
    assert_rel_close(z_last, z_ref, 1e-5, "final key sum")
    for name, g, g_ref in zip(("q", "k", "z0"), grads, grads_ref):
        assert g.dtype == g_ref.dtype
        assert_rel_close(g, g_ref, 1e-5 if dtype == torch.float32 else 1e-2, f"d{name}")


def test_fla_normalize_true_differs_from_ours_only_by_its_eps():
    """fla 0.6.0's own normalize=True (scale 1): q S / (q . cumsum k + 1e-10) — ours adds eps = 1e-6."""
    from fla.ops.linear_attn import chunk_linear_attn

    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k = (F.relu(torch.randn(2, 200, 2, 32, device="cuda", generator=gen)) + 0.05 for _ in range(2))
    v = torch.randn(2, 200, 2, 32, device="cuda", generator=gen)
    theirs, _ = chunk_linear_attn(q, k, v, scale=1.0, normalize=True)
    ours, _ = causal_linear_attn_chunk(q, k, v)
    assert_rel_close(theirs, ours, 5e-3, "normalize=True vs ours")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("attention", ["sla", "gla"])
def test_model_training_step_fla_vs_pytorch(attention, dtype):
    """A SLAB-LM training forward/backward through fla kernels equals the PyTorch chunk path."""
    from slab_edge.models.slab_lm import create_slab_lm

    torch.manual_seed(0)
    # heads of 64 x 64 (the head size compiled above): sla 256 / 4; gla with d_k = d (test-only) and 4 heads
    model = create_slab_lm("tiny", attention=attention, dim=256, num_layers=2, gla_expand_k=1.0).cuda()
    ids = torch.randint(0, 256, (4, 200), device="cuda")
    results = []
    for mode in ("fla", "chunk"):
        for layer in model.layers:
            layer.attn.mode = mode
        model.zero_grad()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, 256), ids[:, 1:].reshape(-1))
        loss.backward()
        results.append((logits.detach().float(), [p.grad.detach().clone() for p in model.parameters()]))
    (lf, gf), (lc, gc) = results
    if dtype == torch.float32:
        rtol, grad_rtol = TOL[dtype]
        assert_rel_close(lf, lc, rtol, "logits")
        for (name, _), a, b in zip(model.named_parameters(), gf, gc):
            assert_rel_close(a, b, 2 * grad_rtol, f"grad {name}")
    else:
        # Whole-model bf16: GLA's per-head RMSNorm magnifies bf16 rounding where a head's output is small, so
        # the largest single error reaches a few % (seen: 3.7% of the logit range on the H200); a semantic
        # mismatch would be O(1) in norm. Compare normwise: ||a - b|| <= 5e-2 ||b||.
        assert_norm_close(lf, lc, 5e-2, "logits")
        for (name, _), a, b in zip(model.named_parameters(), gf, gc):
            assert_norm_close(a, b, 5e-2, f"grad {name}")


def assert_norm_close(actual, expected, rtol, what):
    actual, expected = actual.float(), expected.float()
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err, scale = (actual - expected).norm(), expected.norm().clamp(min=1e-12)
    assert err <= rtol * scale, f"{what}: normwise error {err / scale:.3g} > {rtol:g}"
