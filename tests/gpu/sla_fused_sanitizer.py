#!/usr/bin/env python3
"""Driver for compute-sanitizer over the fused SLA kernels (commands: tests/gpu/test_sla_fused_gpu.py).

Only the slab_sla_* kernels run on the GPU: inputs are made and the float64 reference is computed on the CPU,
tensors move by plain copies. A few shapes per dtype cover both plans (single kernel, split N), the largest
dims, scalar access (D = 12) and misaligned inputs. Exits 1 when a result is off (the sanitizer's own
findings set its exit code through --error-exitcode).
"""

from __future__ import annotations

import sys

import torch

from slab_edge.ops import sla_fused_cuda
from slab_edge.ops.sla_fused import linear_attention_reference
from slab_edge.testing import FUSED_SLA_GPU_TOLERANCE as TOLERANCE

SHAPES = [
    (2, 7, 3, 5, 4),  # single kernel, odd dims
    (128, 150, 2, 16, 24),  # single kernel, B*H = 256, several token tiles
    (1, 100, 1, 128, 128),  # single kernel, the most shared memory
    (1, 300, 2, 64, 64),  # split N: partial / reduce / apply
    (1, 200, 1, 12, 24),  # split N, no 16-byte vectors for 16-bit types
    (1, 260, 1, 128, 128),  # split N, the largest dims
]


def main() -> int:
    lib = sla_fused_cuda.library()
    stream = torch.cuda.current_stream().cuda_stream
    failures = 0
    for dtype in TOLERANCE:
        for shape in SHAPES:
            for offset in (0, 1):  # 1: every tensor one element off a 16-byte boundary
                b, n, h, d, dv = shape
                gen = torch.Generator().manual_seed(0)
                q = torch.randn(b, n, h, d, generator=gen).relu().to(dtype)
                k = torch.randn(b, n, h, d, generator=gen).relu().to(dtype)
                v = torch.randn(b, n, h, dv, generator=gen).to(dtype)
                on_gpu = []
                for t in (q, k, v):
                    buf = torch.empty(t.numel() + offset, dtype=dtype, device="cuda")
                    on_gpu.append(buf[offset:].view(t.shape).copy_(t))
                out = sla_fused_cuda.forward(lib, *on_gpu, 1e-6, stream).cpu()
                expected = linear_attention_reference(q.double(), k.double(), v.double(), 1e-6)
                err = ((out.double() - expected).abs().max() / expected.abs().max()).item()
                ok = err <= TOLERANCE[dtype]
                failures += not ok
                verdict = "ok" if ok else "FAIL"
                print(f"{str(dtype):15s} {str(shape):24s} offset {offset}: rel err {err:.2e} {verdict}")
    print("all results within tolerance" if not failures else f"{failures} results off")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
