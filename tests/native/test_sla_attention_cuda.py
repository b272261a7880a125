"""csrc/sla_attention_cuda.cu on the CPU: the kernels compiled as host C++ against a CUDA emulation.

tests/native/emulation/cuda_host_emulation.h runs the kernels' blocks one after another and their threads as
user-level contexts that switch at __syncthreads, in forward, reverse or shuffled order; WMMA fragments are
emulated whole (with the API's alignment rules and TF32's dropped bits), shared memory starts as NaN bytes.
So this checks, without a GPU: the plans (single kernel / split N), tiling, padding, the ones column, chunk
reduction, the fp16 kv scaling, the hi / lo splits, vector vs scalar access, the workspace bound, and that no
result depends on the order threads run between barriers. It does not check the hardware: tests/gpu does.

Tolerances are relative to max |reference| (float64 maths on the same rounded inputs): the output's rounding,
at most half an ulp = 2^-24 / 2^-11 / 2^-8 of the largest value (fp32 / fp16 / bf16), plus the kernels' own
error, which the emulator (IEEE fp32 fma accumulation) keeps below 2^-20 for fp32 (3xTF32) and far below the
rounding for 16-bit I/O (kv as hi + lo: ~2^-16).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from slab_edge.errors import BackendError, InputError
from slab_edge.native import csrc_dir
from slab_edge.ops.sla_fused import linear_attention_reference
from slab_edge.ops.sla_fused_cuda import DTYPES, SlaShape, bind, forward
from slab_edge.testing import assert_rel_close

EMULATION = Path(__file__).with_name("emulation") / "cuda_host_emulation.h"
SOURCE = csrc_dir() / "sla_attention_cuda.cu"
TOLERANCE = {torch.float32: 2.0**-20, torch.float16: 2.0**-11 + 2.0**-16, torch.bfloat16: 2.0**-8 + 2.0**-16}
SM87_MAX_SMEM = 163 * 1024  # dynamic shared memory one block may opt in to on Jetson Orin (sm_87)
FORWARD, REVERSE, SHUFFLED = 0, 1, 2


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("needs g++ to compile the CUDA source against the host emulation")
    path = tmp_path_factory.mktemp("emulated") / "libslab_sla_emulated.so"
    flags = ["-std=c++17", "-O2", "-fPIC", "-shared", "-fno-strict-aliasing", "-Wall", "-Wextra", "-Werror",
             "-Wno-unknown-pragmas"]  # fmt: skip
    emulated = ["-x", "c++", "-include", str(EMULATION), f"-I{csrc_dir()}", str(SOURCE)]
    cmd = [compiler, *flags, *emulated, "-o", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lib = bind(path)
    lib.slab_emu_reset.argtypes = [ctypes.c_int, ctypes.c_ulonglong]
    lib.slab_emu_error.restype = ctypes.c_char_p
    lib.slab_emu_max_smem.restype = ctypes.c_ulonglong
    return lib


def inputs(shape, dtype, seed=0, scale=1.0):
    """ReLU'd q, k [B, N, H, D] and v [B, N, H, Dv], rounded to dtype."""
    b, n, h, d, dv = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, n, h, d, generator=gen).relu()
    k = (torch.randn(b, n, h, d, generator=gen) * scale).relu()
    return q.to(dtype), k.to(dtype), (torch.randn(b, n, h, dv, generator=gen) * scale).to(dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


def run_guarded(lib, q, k, v, eps=1e-6, offset=0, schedule=FORWARD, workspace_bytes=None):
    """slab_sla_cuda_forward on CPU buffers: inputs at `offset` elements into their buffers (offset 1
    misaligns them for 16-byte vectors), output and workspace pre-filled with NaN / 0xff and followed by
    canaries that must survive. Returns (status, out, launches)."""
    guard = 64

    def placed(t):
        buf = torch.full((offset + t.numel() + guard,), float("nan"), dtype=t.dtype)
        buf[offset : offset + t.numel()] = t.reshape(-1)
        return buf, buf[offset : offset + t.numel()].view(t.shape)

    (_, qp), (_, kp), (_, vp) = placed(q), placed(k), placed(v)
    out_buf, out = placed(torch.full_like(v, float("nan")))
    shape = SlaShape(*q.shape, v.shape[-1])
    needed = lib.slab_sla_cuda_workspace_bytes(shape)
    size = needed if workspace_bytes is None else workspace_bytes
    workspace = torch.full((size + 128 * 1024,), 255, dtype=torch.uint8)  # canaries: more than a kv slice
    lib.slab_emu_reset(schedule, 7)
    status = lib.slab_sla_cuda_forward(
        DTYPES[q.dtype], qp.data_ptr(), kp.data_ptr(), vp.data_ptr(), out.data_ptr(), shape, eps,
        workspace.data_ptr() if size else None, size, None,
    )  # fmt: skip
    assert lib.slab_emu_error() == b"", lib.slab_emu_error().decode()
    nan = bits(torch.full((1,), float("nan"), dtype=v.dtype))
    outside = torch.cat([out_buf[:offset], out_buf[offset + out.numel() :]])
    assert (bits(outside) == nan).all(), "the kernels wrote outside the output"
    assert (workspace[size:] == 255).all(), "the kernels wrote past the workspace they asked for"
    return status, out.clone(), lib.slab_emu_launches()


# (B, N, H, D, Dv), the plan it takes: "single" kernel (B*H >= 256 or N <= 128) or "split" N (3 kernels)
SHAPES = {
    (2, 7, 3, 5, 4): "single",  # tiny, odd dims (scalar access), one partial tile
    (3, 1, 2, 8, 8): "single",  # N = 1
    (2, 5, 1, 1, 1): "single",  # D = Dv = 1
    (64, 20, 4, 8, 8): "single",  # B*H = 256: the single kernel on many pairs
    (128, 70, 2, 16, 24): "single",  # several token tiles per block in both phases, Dv != D
    (1, 100, 1, 128, 128): "single",  # the largest dims: 9 kv tiles per warp, the most shared memory
    (1, 300, 2, 64, 64): "split",  # DeiT head dims, 3 chunks with a partial last tile
    (1, 129, 1, 8, 8): "split",  # one token past a chunk
    (1, 200, 1, 12, 24): "split",  # D = 12: scalar access for 16-bit types, vectors for fp32
    (2, 1000, 1, 24, 40): "split",  # more chunks, Dv != D
    (1, 260, 1, 128, 128): "split",  # the largest dims through partial / reduce / apply
    (1, 257, 1, 32, 32): "split",  # Swin / CSwin head dim
}
DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@pytest.mark.parametrize("dtype", list(DTYPE_IDS), ids=DTYPE_IDS.get)
@pytest.mark.parametrize("shape", list(SHAPES), ids=lambda s: "B{}-N{}-H{}-D{}-Dv{}".format(*s))
def test_kernels_match_the_reference(lib, shape, dtype):
    q, k, v = inputs(shape, dtype)
    status, out, launches = run_guarded(lib, q, k, v)
    assert status == 0, lib.slab_sla_status_string(status)
    assert launches == (1 if SHAPES[shape] == "single" else 3)
    expected = linear_attention_reference(q.double(), k.double(), v.double(), 1e-6)
    assert_rel_close(out.double(), expected, TOLERANCE[dtype], f"{shape} {dtype}")


@pytest.mark.parametrize("dtype", list(DTYPE_IDS), ids=DTYPE_IDS.get)
@pytest.mark.parametrize("shape", [(2, 7, 3, 5, 4), (1, 100, 1, 128, 128), (1, 300, 2, 64, 64)], ids=str)
def test_results_do_not_depend_on_the_thread_order_between_barriers(lib, shape, dtype):
    """A missing __syncthreads lets a thread read a tile before it is written (or after it is overwritten):
    reverse and shuffled orders then change the result. Bitwise equality, and misaligned inputs on top."""
    q, k, v = inputs(shape, dtype, seed=1)
    _, reference, _ = run_guarded(lib, q, k, v, schedule=FORWARD)
    for schedule in (REVERSE, SHUFFLED):
        status, out, _ = run_guarded(lib, q, k, v, schedule=schedule, offset=1)
        assert status == 0 and torch.equal(bits(out), bits(reference)), f"schedule {schedule}"


def test_fp16_kv_beyond_the_fp16_range_and_tiny_kv(lib):
    """K^T V sums far above 65504 (and far below fp16's normal range) are scaled by a power of two before the
    fp16 tensor-core product, and eps with them: the output stays finite and as accurate as its rounding. An
    eps of the denominator's size (5.0 here) makes a wrongly scaled eps visible."""
    for scale, eps in [(40.0, 1e-6), (1e-3, 1e-6), (40.0, 5e3), (1e-3, 5e-5)]:
        for shape in [(2, 7, 3, 5, 4), (1, 300, 2, 64, 64), (1, 300, 1, 16, 16)]:
            q, k, v = inputs(shape, torch.float16, scale=scale)
            status, out, _ = run_guarded(lib, q, k, v, eps=eps)
            expected = linear_attention_reference(q.double(), k.double(), v.double(), eps)
            assert status == 0 and torch.isfinite(out).all()
            assert_rel_close(out.double(), expected, TOLERANCE[torch.float16], f"scale {scale} {shape}")


@pytest.mark.parametrize("dtype", list(DTYPE_IDS), ids=DTYPE_IDS.get)
def test_eps_comparable_to_the_normalizer(lib, dtype):
    for shape in [(2, 7, 3, 5, 4), (1, 300, 2, 64, 64)]:
        q, k, v = inputs(shape, dtype)
        den = (q.double() * k.double().sum(1, keepdim=True)).sum(-1).median().item()
        status, out, _ = run_guarded(lib, q, k, v, eps=den)
        expected = linear_attention_reference(q.double(), k.double(), v.double(), den)
        assert status == 0
        assert_rel_close(out.double(), expected, TOLERANCE[dtype], f"eps {den:.3g} {shape}")


def test_fp32_keeps_fp32_accuracy(lib):
    """3xTF32: plain TF32 inputs (10 mantissa bits) would give errors near 2^-11; the split gives < 2^-20."""
    q, k, v = inputs((1, 300, 2, 64, 64), torch.float32)
    _, out, _ = run_guarded(lib, q, k, v)
    expected = linear_attention_reference(q.double(), k.double(), v.double(), 1e-6)
    err = ((out.double() - expected).abs().max() / expected.abs().max()).item()
    assert err < 2.0**-20, err


def test_shared_memory_fits_jetson_orin(lib):
    for dtype in DTYPE_IDS:
        for shape in [(1, 100, 1, 128, 128), (1, 260, 1, 128, 128)]:
            q, k, v = inputs(shape, dtype)
            run_guarded(lib, q, k, v)
            assert lib.slab_emu_max_smem() <= SM87_MAX_SMEM, (shape, dtype, lib.slab_emu_max_smem())


def test_status_codes(lib):
    q, k, v = inputs((1, 300, 1, 8, 8), torch.float32)
    needed = lib.slab_sla_cuda_workspace_bytes(SlaShape(1, 300, 1, 8, 8))
    assert needed > 0
    assert run_guarded(lib, q, k, v, workspace_bytes=needed - 1)[0] == 3  # SLAB_ERR_WORKSPACE
    nothing = (None, None, None, None)
    assert lib.slab_sla_cuda_forward(7, *nothing, SlaShape(1, 1, 1, 1, 1), 1e-6, None, 0, None) == 2
    for bad in [(0, 1, 1, 1, 1), (1, 1, 1, 129, 1), (1, 1, 1, 1, 129), (1, -1, 1, 1, 1)]:
        assert lib.slab_sla_cuda_forward(0, *nothing, SlaShape(*bad), 1e-6, None, 0, None) == 1
        assert lib.slab_sla_cuda_workspace_bytes(SlaShape(*bad)) == 0
    assert b"workspace" in lib.slab_sla_status_string(3)


def test_workspace_bound_never_shrinks_when_a_dimension_grows(lib):
    """A TensorRT plugin reports the workspace of its profile's largest shape: smaller ones must fit in it."""
    sizes = {
        "batch": [1, 3, 85, 86, 300],
        "tokens": [1, 128, 129, 196, 1024, 4096, 70000],
        "heads": [1, 3, 6],
        "head_dim": [1, 16, 17, 64, 128],
        "value_dim": [1, 15, 16, 64, 128],
    }
    base = {"batch": 4, "tokens": 4096, "heads": 3, "head_dim": 64, "value_dim": 64}
    for dim, values in sizes.items():
        got = [lib.slab_sla_cuda_workspace_bytes(SlaShape(**{**base, dim: x})) for x in values]
        assert got == sorted(got), (dim, got)


def test_forward_glue_casts_makes_contiguous_and_raises_one_line_errors(lib):
    """sla_fused_cuda.forward (the PyTorch path's ctypes call) on CPU tensors through the emulated library."""
    q, k, v = inputs((2, 150, 3, 16, 16), torch.bfloat16)
    out = forward(lib, q, k.float(), v.transpose(0, 1).contiguous().transpose(0, 1), 1e-6, 0)
    expected = linear_attention_reference(q.double(), k.double(), v.double(), 1e-6)
    assert out.dtype == torch.bfloat16 and out.shape == v.shape
    assert_rel_close(out.double(), expected, TOLERANCE[torch.bfloat16], "cast + non-contiguous")
    wide = torch.zeros(1, 2, 1, 130)
    bad = [((q.double(), k, v), "float64"), ((q, k[:, :, :2], v), "expected q, k"),
           ((wide, wide, torch.zeros(1, 2, 1, 4)), "head dims")]  # fmt: skip
    for args, match in bad:
        with pytest.raises(InputError, match=match) as error:
            forward(lib, *args, 1e-6, 0)
        assert "\n" not in str(error.value)


def test_bind_refuses_a_library_without_the_entry_points(tmp_path):
    with pytest.raises(BackendError, match="cannot use the fused SLA library"):
        bind(tmp_path / "missing.so")
    so = Path(torch.__file__).parent / "lib" / "libc10.so"
    with pytest.raises(BackendError, match="slab_sla_cuda_workspace_bytes"):
        bind(so)
