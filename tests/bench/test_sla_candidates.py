"""The candidate SLA training pieces of bench/sla_pieces_gpu.py against the library's forms (CPU).

bench/lm_train_gpu.py trains with them as sla/chunked_scan, sla/fused_conv, sla/padded_conv (and pairs);
these tests make sure a speed difference it reports is between equal maths. The normalizer built on the
chunked scan: tests/ops/test_causal_sla.py. The compiled conv is tested on the GPU
(tests/gpu/test_sla_candidates_gpu.py): torch.compile on a CPU costs more than this suite's budget.
"""

from __future__ import annotations

import pytest
import torch

from slab_edge.ops.causal_sla import causal_conv1d, time_scan
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


def test_fused_conv_drop_in_leaves_stateful_calls_to_the_library(sla_pieces):
    """With a conv state in or out (prefill, decoding) the drop-in calls the library conv, unchanged."""
    calls = []

    def fallback(*args):
        calls.append(args)
        return causal_conv1d(*args)

    conv = sla_pieces.training_conv_drop_in(sla_pieces.conv_shifts, fallback)
    x, w = torch.randn(1, 5, 4), torch.randn(4, 1, 3)
    state = torch.randn(1, 4, 2)
    y, new_state = conv(x, w, None, state, True)
    y_ref, state_ref = causal_conv1d(x, w, None, state, True)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(new_state, state_ref)
    assert len(calls) == 1
