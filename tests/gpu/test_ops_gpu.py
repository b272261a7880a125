"""Our PyTorch forms on CUDA in bf16 / fp16 (no fla needed): chunk vs the float64 definition.

Run on the GPU machine: python -m pytest tests/gpu -m gpu -q
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slab_edge import testing
from slab_edge.ops.causal_sla import causal_linear_attn_chunk, causal_linear_attn_naive
from slab_edge.ops.gla import gla_chunk, gla_gate, gla_naive

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("needs_cuda")]
DTYPES = [torch.bfloat16, torch.float16]
# relative-to-magnitude tolerances for outputs and gradients of half-precision inputs
TOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3}


def assert_rel_close(actual, expected, rtol, what, floor=1e-12):
    """slab_edge.testing.assert_rel_close on both tensors in float64."""
    testing.assert_rel_close(actual.double(), expected.double(), rtol, what, floor)


def grads_of(fn, leaves, gen_seed=1):
    leaves = [x.detach().requires_grad_() for x in leaves]
    out, state = fn(*leaves)
    gen = torch.Generator(device="cuda").manual_seed(gen_seed)
    do = torch.randn(out.shape, device="cuda", generator=gen)
    grads = torch.autograd.grad((out.double() * do.double()).sum(), leaves)
    return out.detach(), grads


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("gate", ["normal", "strong"])
def test_gla_chunk_half_inputs(dtype, gate):
    gen = torch.Generator(device="cuda").manual_seed(0)
    b, t, h, k, v = 2, 200, 4, 32, 64
    q, kk = (torch.randn(b, t, h, k, device="cuda", generator=gen).to(dtype) for _ in range(2))
    vv = torch.randn(b, t, h, v, device="cuda", generator=gen).to(dtype)
    g = gla_gate(
        torch.randn(b, t, h, k, device="cuda", generator=gen) * 2 - (300.0 if gate == "strong" else 0.0)
    )
    with torch.autocast("cuda", dtype=dtype):
        out, grads = grads_of(lambda *x: gla_chunk(*x), [q, kk, vv, g])
    ref, ref_grads = grads_of(lambda *x: gla_naive(*x), [x.double() for x in (q, kk, vv, g)])
    assert out.dtype == dtype
    assert_rel_close(out, ref, TOL[dtype], "output")
    floor = 1e-3 * max(float(r.abs().max()) for r in ref_grads)
    for name, a, r in zip(["q", "k", "v", "g"], grads, ref_grads):
        assert_rel_close(a, r, 2 * TOL[dtype], f"d{name}", floor=floor)


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_causal_sla_chunk_half_inputs_keeps_fp32_normalizer(dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    b, t, h, d = 2, 1000, 4, 64  # long enough that a half-precision key sum would lose digits
    q, k = (F.relu(torch.randn(b, t, h, d, device="cuda", generator=gen)).to(dtype) for _ in range(2))
    v = torch.randn(b, t, h, d, device="cuda", generator=gen).to(dtype)
    with torch.autocast("cuda", dtype=dtype):
        out, grads = grads_of(lambda *x: causal_linear_attn_chunk(*x, output_final_state=True), [q, k, v])
    ref, ref_grads = grads_of(lambda *x: causal_linear_attn_naive(*x), [x.double() for x in (q, k, v)])
    assert out.dtype == dtype
    assert_rel_close(out, ref, TOL[dtype], "output")
    for name, a, r in zip(["q", "k", "v"], grads, ref_grads):
        assert_rel_close(a, r, 2 * TOL[dtype], f"d{name}")


def test_model_prefill_and_steps_on_cuda(monkeypatch):
    from slab_edge.models.slab_lm import create_slab_lm

    # TF32 in the cuDNN conv would differ from the step's float32 sum
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)

    for attention in ("sla", "gla", "softmax"):
        torch.manual_seed(0)
        model = create_slab_lm("tiny", attention=attention, attn_mode="chunk").cuda().eval()
        ids = torch.randint(0, 256, (2, 90), device="cuda")
        with torch.no_grad():
            full = model(ids)
            logits, state = model.prefill(ids[:, :70])
            steps = [logits]
            for i in range(70, 90):
                step_logits, state = model.step(ids[:, i], state)
                steps.append(step_logits[:, None])
        assert_rel_close(torch.cat(steps, 1), full, 1e-4, attention)
