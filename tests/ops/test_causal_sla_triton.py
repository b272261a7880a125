"""ops/causal_sla_triton.py (the normalizer kernels of SLA's fla training path) == the PyTorch forms, on CPU.

Triton's interpreter (TRITON_INTERPRET=1) runs the same kernels on CPU tensors with numpy, so the kernels'
indexing, masking and chunk carries are checked here; the compiled kernels:
tests/gpu/test_causal_sla_gpu.py. The interpreter must be chosen before triton is first imported (torch
imports it on the way to slab_edge), so the checks run in a child process started with the variable set:
`TRITON_INTERPRET=1 python tests/ops/test_causal_sla_triton.py` prints one JSON line per case.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

# (T, with z0): inside one chunk, exactly one chunk, a partial third chunk
CASES = [(t, use_state) for t in (1, 64, 150) for use_state in (False, True)]


def check_case(module, t: int, use_state: bool) -> str:
    """'ok', or the first mismatch: outputs, final key sum and the gradients of q, k (and z0) vs
    causal_normalizer, signed cotangents; head size 24 is not a power of two, so the key mask is used."""
    import torch
    import torch.nn.functional as F

    from slab_edge.ops.causal_sla import causal_normalizer
    from slab_edge.testing import assert_rel_close

    gen = torch.Generator().manual_seed(t)
    q, k = (F.relu(torch.randn(2, t, 3, 24, generator=gen)) for _ in range(2))
    z0 = torch.rand(2, 3, 24, generator=gen) if use_state else None
    cot_den, cot_z = torch.randn(2, t, 3, 1, generator=gen), torch.randn(2, 3, 24, generator=gen)
    results = []
    for fn in (module.causal_normalizer_triton, causal_normalizer):
        leaves = [x.clone().requires_grad_() for x in (q, k) + ((z0,) if use_state else ())]
        den, z_last = fn(leaves[0], leaves[1], leaves[2] if use_state else None, 1e-3)
        loss = (den * cot_den).sum() + (z_last * cot_z).sum()
        results.append((den.detach(), z_last.detach(), torch.autograd.grad(loss, leaves)))
    (den, z_last, grads), (den_ref, z_ref, grads_ref) = results
    try:
        assert den.shape == den_ref.shape and den.dtype == z_last.dtype == torch.float32, "shape or dtype"
        assert_rel_close(den, den_ref, 1e-6, "denominator")
        assert_rel_close(z_last, z_ref, 1e-6, "final key sum")
        for name, g, g_ref in zip(("q", "k", "z0"), grads, grads_ref):
            assert g.dtype == g_ref.dtype, f"d{name} dtype"
            assert_rel_close(g, g_ref, 1e-6, f"d{name}")
    except AssertionError as error:
        return str(error)
    return "ok"


def check_divide(module, t: int, use_state: bool) -> str:
    """'ok', or the first mismatch: divide_by_normalizer_triton == num / causal_normalizer's denominator
    (float32 division), its final key sum, and the gradients of num, q, k (and z0); value size 40 is not a
    power of two either."""
    import torch
    import torch.nn.functional as F

    from slab_edge.ops.causal_sla import causal_normalizer
    from slab_edge.testing import assert_rel_close

    def reference(num, q, k, z0, eps, out_dtype):
        den, z_last = causal_normalizer(q, k, z0, eps)
        return (num.float() / den).to(out_dtype), z_last

    gen = torch.Generator().manual_seed(100 + t)
    q, k = (F.relu(torch.randn(2, t, 3, 24, generator=gen)) for _ in range(2))
    num = torch.randn(2, t, 3, 40, generator=gen)
    z0 = torch.rand(2, 3, 24, generator=gen) if use_state else None
    cot_out, cot_z = torch.randn(2, t, 3, 40, generator=gen), torch.randn(2, 3, 24, generator=gen)
    results = []
    for fn in (module.divide_by_normalizer_triton, reference):
        leaves = [x.clone().requires_grad_() for x in (num, q, k) + ((z0,) if use_state else ())]
        out, z_last = fn(*leaves[:3], leaves[3] if use_state else None, 1e-3, torch.float32)
        loss = (out * cot_out).sum() + (z_last * cot_z).sum()
        results.append((out.detach(), z_last.detach(), torch.autograd.grad(loss, leaves)))
    (out, z_last, grads), (out_ref, z_ref, grads_ref) = results
    try:
        assert out.shape == out_ref.shape and out.dtype == torch.float32, "shape or dtype"
        assert_rel_close(out, out_ref, 1e-6, "output")
        assert_rel_close(z_last, z_ref, 1e-6, "final key sum")
        for name, g, g_ref in zip(("num", "q", "k", "z0"), grads, grads_ref):
            assert g.dtype == g_ref.dtype, f"d{name} dtype"
            assert_rel_close(g, g_ref, 1e-5, f"d{name}")
    except AssertionError as error:
        return str(error)
    return "ok"


def check_bf16(module) -> str:
    """bf16 q, k (mixed-precision training): float32 outputs, bf16 gradients, sums in float32."""
    import torch
    import torch.nn.functional as F

    from slab_edge.ops.causal_sla import causal_normalizer
    from slab_edge.testing import assert_rel_close

    gen = torch.Generator().manual_seed(0)
    q, k = (F.relu(torch.randn(1, 100, 2, 16, generator=gen)).bfloat16().requires_grad_() for _ in range(2))
    den, z_last = module.causal_normalizer_triton(q, k, None, 1e-6)
    den_ref, _ = causal_normalizer(q.float(), k.float(), None, 1e-6)
    den.sum().backward()
    try:
        assert den.dtype == z_last.dtype == torch.float32, "output dtypes"
        assert_rel_close(den, den_ref, 1e-6, "denominator")
        assert q.grad.dtype == k.grad.dtype == torch.bfloat16, "gradient dtypes"
    except AssertionError as error:
        return str(error)
    return "ok"


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    module = importlib.import_module("slab_edge.ops.causal_sla_triton")
    for t, use_state in CASES:
        print(json.dumps({"case": [t, use_state], "result": check_case(module, t, use_state)}), flush=True)
        result = check_divide(module, t, use_state)
        print(json.dumps({"case": ["divide", t, use_state], "result": result}), flush=True)
    print(json.dumps({"case": "bf16", "result": check_bf16(module)}), flush=True)


@pytest.fixture(scope="module")
def interpreted_results() -> dict:
    pytest.importorskip("triton", reason="needs triton (Linux builds of torch bring it)")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {json.dumps(r["case"]): r["result"] for r in lines}


@pytest.mark.parametrize("t,use_state", CASES, ids=[f"T{t}-{'z0' if s else 'zero'}" for t, s in CASES])
def test_triton_normalizer_matches_pytorch_form_with_gradients(interpreted_results, t, use_state):
    assert interpreted_results[json.dumps([t, use_state])] == "ok"


@pytest.mark.parametrize("t,use_state", CASES, ids=[f"T{t}-{'z0' if s else 'zero'}" for t, s in CASES])
def test_triton_divide_matches_pytorch_form_with_gradients(interpreted_results, t, use_state):
    assert interpreted_results[json.dumps(["divide", t, use_state])] == "ok"


def test_triton_normalizer_reads_bf16_inputs(interpreted_results):
    assert interpreted_results[json.dumps("bf16")] == "ok"


if __name__ == "__main__":
    main()
