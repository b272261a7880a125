"""The fla training path's own pieces of causal SLA on CUDA against the library's portable forms: fla's
Triton causal conv (and the bench's compiled conv candidate) vs the cuDNN conv, and the Triton normalizer
kernels (ops/causal_sla_triton.py) vs the PyTorch division. The same Triton kernels on a CPU through the
interpreter: tests/ops/test_causal_sla_triton.py; the whole fla path vs the PyTorch chunk path:
tests/gpu/test_fla_equivalence.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slab_edge import testing
from slab_edge.ops.backend import fla_available
from slab_edge.ops.causal_sla import causal_conv1d, causal_conv1d_fla, causal_normalizer

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("needs_cuda")]


def assert_rel_close(actual, expected, rtol, what):
    testing.assert_rel_close(actual.float(), expected.float(), rtol, what)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(1, 4096, 1024), (3, 300, 64)], ids=["B1-T4096-C1024", "B3-T300-C64"])
@pytest.mark.parametrize("conv", ["fla", "compiled"])
def test_training_conv_matches_cudnn_conv(conv, shape, dtype, sla_pieces):
    """causal_conv1d_fla (the fla path's conv) and the bench's torch.compile'd candidate sla/fused_conv ==
    causal_conv1d from zero history: outputs and gradients of x, weight and bias."""
    if conv == "fla" and not fla_available():
        pytest.skip("needs flash-linear-attention: pip install flash-linear-attention==0.6.0 fla-core==0.6.0")
    gen = torch.Generator(device="cuda").manual_seed(0)
    c = shape[-1]
    x = torch.randn(*shape, device="cuda", generator=gen).to(dtype)
    w = torch.randn(c, 1, 4, device="cuda", generator=gen) / 2
    bias = torch.randn(c, device="cuda", generator=gen)
    grad_out = torch.randn(*shape, device="cuda", generator=gen)
    results = []
    candidate = causal_conv1d_fla if conv == "fla" else sla_pieces.fused_conv
    for fn in (candidate, lambda x, w, bias: causal_conv1d(x, w, bias)[0]):
        leaves = [t.detach().requires_grad_() for t in (x, w, bias)]
        y = fn(*leaves)
        assert y.dtype == dtype and y.shape == shape
        results.append((y.detach(), torch.autograd.grad((y.float() * grad_out).sum(), leaves)))
    (y, grads), (y_ref, grads_ref) = results
    rtol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: float32 accumulation vs cuDNN's per-step rounding
    assert_rel_close(y, y_ref, rtol, "output")
    for name, g, g_ref in zip(("x", "weight", "bias"), grads, grads_ref):
        assert g.dtype == g_ref.dtype
        assert_rel_close(g, g_ref, rtol, f"d{name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_divide_matches_pytorch_division(dtype):
    """divide_by_normalizer_triton (the division fused into the normalizer kernels) == num /
    causal_normalizer's denominator in float32, cast to the value dtype; outputs, key sum and the gradients of
    num, q, k and z0 at B1 x T4096 x H8 x 128 (slab-lm-350m's heads)."""
    from slab_edge.ops.causal_sla_triton import divide_by_normalizer_triton

    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k = (F.relu(torch.randn(1, 4096, 8, 128, device="cuda", generator=gen)).to(dtype) for _ in range(2))
    num = torch.randn(1, 4096, 8, 128, device="cuda", generator=gen).to(dtype)
    z0 = torch.rand(1, 8, 128, device="cuda", generator=gen)

    def reference(num, q, k, z0, eps, out_dtype):
        den, z_last = causal_normalizer(q, k, z0, eps)
        return (num.float() / den).to(out_dtype), z_last

    results = []
    for fn in (divide_by_normalizer_triton, reference):
        leaves = [x.detach().requires_grad_() for x in (num, q, k, z0)]
        out, z_last = fn(*leaves, 1e-6, dtype)
        assert out.dtype == dtype and z_last.dtype == torch.float32
        weights = torch.linspace(-1, 1, out.numel(), device="cuda").view(out.shape)
        loss = (out.float() * weights).sum() + z_last.square().sum()
        results.append((out.detach(), z_last.detach(), torch.autograd.grad(loss, leaves)))
    (out, z_last, grads), (out_ref, z_ref, grads_ref) = results
    rtol = 1e-5 if dtype == torch.float32 else 1e-2
    assert_rel_close(out, out_ref, rtol, "output")
    assert_rel_close(z_last, z_ref, 1e-5, "final key sum")
    for name, g, g_ref in zip(("num", "q", "k", "z0"), grads, grads_ref):
        assert g.dtype == g_ref.dtype
        assert_rel_close(g, g_ref, rtol, f"d{name}")
