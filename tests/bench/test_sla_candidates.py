"""The SLA training pieces of bench/sla_pieces_gpu.py (candidates and earlier forms) against the library's
forms (CPU).

bench/lm_train_gpu.py trains with them as sla/scan_divide, sla/cudnn_conv, sla/fused_conv, sla/padded_conv
(and pairs); these tests make sure a speed difference it reports is between equal maths. The compiled conv
and fla's scan are tested on the GPU (tests/gpu/test_causal_sla_gpu.py, test_fla_equivalence.py):
torch.compile on a CPU costs more than this suite's budget.
"""

from __future__ import annotations

import pytest
import torch

from slab_edge.ops.causal_sla import causal_conv1d, causal_normalizer, time_scan
from slab_edge.testing import assert_rel_close


@pytest.mark.parametrize("reverse", [False, True], ids=["prefix", "suffix"])
@pytest.mark.parametrize("t", [1, 15, 16, 50], ids=lambda t: f"T{t}")
def test_chunked_time_scan_matches_time_scan(t, reverse, sla_pieces):
    """Any T (a partial last chunk or not), both directions, signed values; float32 out for bf16 in."""
    x = torch.randn(2, t, 3, 5, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    z = sla_pieces.chunked_time_scan(x, reverse, chunk=16)
    assert z.shape == x.shape and z.dtype == torch.float64
    assert_rel_close(z, time_scan(x, reverse), 1e-12, "scan")
    # float32: only the order of the additions differs
    z32 = sla_pieces.chunked_time_scan(x.float(), reverse, chunk=16)
    assert_rel_close(z32, time_scan(x.float(), reverse), 1e-6, "fp32 scan")
    assert sla_pieces.chunked_time_scan(x.bfloat16(), reverse).dtype == torch.float32


@pytest.mark.parametrize("t,width", [(10, 4), (2, 4), (9, 1)], ids=lambda v: str(v))
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("candidate", ["conv_shifts", "padded_conv"])
def test_candidate_conv_matches_conv1d_with_gradients(candidate, t, width, with_bias, sla_pieces):
    """conv_shifts (the maths sla/fused_conv compiles) and padded_conv == causal_conv1d from zero history:
    outputs and the gradients of x, weight and bias in float64."""
    conv = getattr(sla_pieces, candidate)
    gen = torch.Generator().manual_seed(t)
    leaves = [
        torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()
        for shape in ((2, t, 6), (6, 1, width), (6,))
    ]
    x, w, bias = leaves
    bias = bias if with_bias else None
    grad_out = torch.randn(2, t, 6, generator=gen, dtype=torch.float64)
    results = []
    for fn in (lambda: conv(x, w, bias), lambda: causal_conv1d(x, w, bias)[0]):
        y = fn()
        results.append((y, torch.autograd.grad((y * grad_out).sum(), leaves, allow_unused=True)))
    (y, grads), (y_ref, grads_ref) = results
    torch.testing.assert_close(y, y_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("use_state", [False, True], ids=["zero", "z0"])
@pytest.mark.parametrize("scan", ["time_scan", "chunked_scan"])
def test_scan_normalizer_matches_the_pytorch_form_with_gradients(scan, use_state, sla_pieces):
    """scan_normalizer's autograd maths (the session 3-4 fla path, fla's scans swapped for time_scan, or for
    chunked_time_scan with 16-step chunks, so several chunks and a partial last one) == causal_normalizer,
    and its hand-written backward passes gradcheck in float64; fla's scan itself is tested on the GPU."""
    if scan == "time_scan":
        scan_fn = time_scan
    else:
        scan_fn = lambda x, reverse: sla_pieces.chunked_time_scan(x, reverse, chunk=16)  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.relu(torch.randn(2, 70, 3, 8, generator=gen)) for _ in range(2))
    z0 = torch.rand(2, 3, 8, generator=gen) * 5 if use_state else None
    den, z_last = sla_pieces.scan_normalizer(q, k, z0, 1e-3, scan=scan_fn)
    den_ref, z_ref = causal_normalizer(q, k, z0, 1e-3)
    assert den.dtype == z_last.dtype == torch.float32
    assert_rel_close(den, den_ref, 1e-6, "denominator")
    assert_rel_close(z_last, z_ref, 1e-6, "final key sum")
    leaves = [x.double().requires_grad_() for x in (q[:, :20], k[:, :20])]
    if z0 is not None:
        leaves.append(z0.double().requires_grad_())
    assert torch.autograd.gradcheck(
        lambda q, k, *z0: sla_pieces.scan_normalizer(q, k, z0[0] if z0 else None, 1e-3, scan=scan_fn),
        leaves,
    )
