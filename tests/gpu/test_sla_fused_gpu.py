"""The fused SLA CUDA kernel (csrc/sla_attention_cuda.cu) on a GPU, through torch.ops.slab.linear_attention.

Run on the GPU machine (the first test builds the "torch-cuda" library with slab_edge.native.build if it is
not built yet, ~1 min):

    python3 -m pytest tests/gpu -m gpu -k sla_fused -q

compute-sanitizer over a few shapes per dtype (tests/gpu/sla_fused_sanitizer.py; only the slab kernels run
on the GPU there, inputs and references stay on the CPU; no caching allocator, so memcheck sees every
tensor's bounds):

    export PYTORCH_NO_CUDA_MEMORY_CACHING=1
    SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | tail -1)
    $SAN --tool memcheck --error-exitcode 1 python3 tests/gpu/sla_fused_sanitizer.py
    $SAN --tool racecheck --racecheck-report all --error-exitcode 1 python3 tests/gpu/sla_fused_sanitizer.py
    $SAN --tool synccheck --error-exitcode 1 python3 tests/gpu/sla_fused_sanitizer.py
    $SAN --tool initcheck --error-exitcode 1 python3 tests/gpu/sla_fused_sanitizer.py

Tolerances: slab_edge.testing.FUSED_SLA_GPU_TOLERANCE (relative to max |reference|, the reference in
float64 from the same rounded inputs; the derivation is there).
"""

from __future__ import annotations

import re

import pytest
import torch

from slab_edge.errors import InputError
from slab_edge.ops import sla_fused, sla_fused_cuda
from slab_edge.ops.sla_fused import fused_sla, linear_attention, linear_attention_reference
from slab_edge.testing import FUSED_SLA_GPU_TOLERANCE as TOLERANCE
from slab_edge.testing import assert_rel_close, calibrated_random_model

pytestmark = pytest.mark.gpu

DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

# (B, N, H, D, Dv) and why
ZOO_SHAPES = [
    (256, 196, 3, 64, 64),  # SLAB-DeiT-T at 224, batch 256: B*H = 768, single kernel
    (32, 1024, 3, 64, 64),  # SLAB-DeiT-T at 512, batch 32: split N
    (4, 4096, 3, 64, 64),  # SLAB-DeiT-T at 1024, batch 4: 12 (b, h) pairs, 32 chunks
    (64, 3136, 3, 32, 32),  # SLAB-Swin-T stage 1 (batch 64): single kernel, long N
    (8, 3136, 3, 32, 32),  # the same at batch 8: split N
    (64, 784, 6, 32, 32),  # SLAB-Swin-T stage 2
    (16, 3136, 2, 32, 32),  # SLAB-CSwin-T stage 1
    (16, 3136, 1, 64, 64),  # SLAB-PVT-T stage 1
]
EDGE_SHAPES = [
    (2, 1, 3, 64, 64),  # N = 1
    (3, 7, 2, 8, 8),
    (1, 1000, 1, 12, 12),  # B*H = 1, D = 12 (no 16-byte vectors for 16-bit types)
    (1, 4096, 1, 128, 128),  # B*H = 1, the largest dims
    (2, 1000, 2, 24, 40),  # Dv != D
    (5, 333, 3, 32, 8),
    (2, 129, 2, 128, 64),
    (1024, 49, 4, 32, 32),  # B*H = 4096 (Swin-like windows)
    (300, 196, 1, 64, 128),
]


def rand_qkv(shape, dtype, seed=0, device="cuda"):
    b, n, h, d, dv = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(b, n, h, d, device=device, generator=gen).relu()
    k = torch.randn(b, n, h, d, device=device, generator=gen).relu()
    return q.to(dtype), k.to(dtype), torch.randn(b, n, h, dv, device=device, generator=gen).to(dtype)


def reference64(q, k, v, eps=1e-6):
    return linear_attention_reference(q.double(), k.double(), v.double(), eps)


def slab_kernels(fn) -> list[str]:
    """The slab_sla_<kind>_kernel CUDA kernels `fn()` launches, in order, as kinds: "fused", "kv_partial",
    "kv_reduce", "apply" (torch.profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [m.group(1) for e in prof.events() if (m := re.search(r"slab_sla_(\w+?)_kernel", e.name))]


@pytest.fixture
def kernel(needs_cuda):
    """The CUDA kernel registered (built first if needed): a failure to build or load fails the test."""
    sla_fused_cuda.register()
    assert sla_fused.load_kernel("cuda")
    return sla_fused_cuda.library()


def test_sla_fused_kernel_loads_on_the_first_cuda_tensor_an_sla_layer_sees(needs_cuda, monkeypatch):
    """No explicit register(): auto mode loads (or builds) the library when use_fused first sees CUDA."""
    monkeypatch.setattr(sla_fused, "_kernel_devices", set())
    monkeypatch.setattr(sla_fused, "_load_tried", set())
    model = small_random_model("slab_deit_tiny_patch16_224")
    x = torch.randn(2, 3, 224, 224, device="cuda")
    with torch.no_grad():
        kinds = slab_kernels(lambda: model(x))
    assert "cuda" in sla_fused._kernel_devices and kinds.count("apply") == 12, kinds


@pytest.mark.parametrize("shape", [(3, 7, 2, 8, 8), (2, 300, 3, 64, 64)], ids=["single", "split"])
def test_sla_fused_cuda_kernel_passes_opcheck(kernel, shape):
    """torch.library.opcheck with the CUDA kernel: schema, fake (meta) impl vs the kernel's output, and
    tracing through AOT dispatch with static and dynamic shapes."""
    torch.library.opcheck(linear_attention, (*rand_qkv(shape, torch.bfloat16), 1e-6))


@pytest.mark.parametrize("dtype", list(DTYPE_IDS), ids=DTYPE_IDS.get)
@pytest.mark.parametrize("shape", ZOO_SHAPES + EDGE_SHAPES, ids=lambda s: "B{}-N{}-H{}-D{}-Dv{}".format(*s))
def test_sla_fused_kernel_matches_the_float64_reference(kernel, shape, dtype):
    q, k, v = rand_qkv(shape, dtype)
    out = linear_attention(q, k, v, 1e-6)
    assert out.dtype == dtype and out.shape == v.shape and out.is_contiguous()
    assert_rel_close(out.double(), reference64(q, k, v), TOLERANCE[dtype], f"{shape} {dtype}")


@pytest.mark.parametrize("dtype", list(DTYPE_IDS), ids=DTYPE_IDS.get)
def test_sla_fused_fp16_range_eps_and_misaligned_inputs(kernel, dtype):
    """kv beyond fp16's range (scaled on the GPU), eps as large as the normalizer, inputs 2 bytes off a
    16-byte boundary (the kernels fall back from vector access), a non-default stream."""
    cases = [((2, 300, 3, 64, 64), 40.0, 1e-6), ((256, 196, 3, 64, 64), 40.0, 1e-6),
             ((2, 300, 3, 64, 64), 1.0, 300.0), ((1, 1000, 2, 16, 16), 1e-3, 1e-6)]  # fmt: skip
    for shape, scale, eps in cases:
        q, k, v = (t * scale if i else t for i, t in enumerate(rand_qkv(shape, dtype)))
        buffers = [torch.empty(t.numel() + 1, dtype=dtype, device="cuda") for t in (q, k, v)]
        misaligned = [buf[1:].view(t.shape) for buf, t in zip(buffers, (q, k, v))]
        for dst, src in zip(misaligned, (q, k, v)):
            dst.copy_(src)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = linear_attention(*misaligned, eps)
        torch.cuda.current_stream().wait_stream(stream)
        assert torch.isfinite(out).all()
        expected = reference64(q, k, v, eps)
        assert_rel_close(out.double(), expected, TOLERANCE[dtype], f"{shape} x{scale} eps {eps}")


@pytest.mark.parametrize("shape", [(256, 196, 3, 64, 64), (4, 4096, 3, 64, 64)], ids=["single", "split"])
def test_sla_fused_is_deterministic_and_launches_the_planned_kernels(kernel, shape):
    q, k, v = rand_qkv(shape, torch.bfloat16)
    first = linear_attention(q, k, v)
    assert all(torch.equal(first, linear_attention(q, k, v)) for _ in range(3))  # no float atomics
    expected = ["fused"] if shape[0] * shape[2] >= 256 else ["kv_partial", "kv_reduce", "apply"]
    assert slab_kernels(lambda: linear_attention(q, k, v)) == expected


@pytest.mark.parametrize("shape", [(256, 196, 3, 64, 64), (4, 4096, 3, 64, 64)], ids=["single", "split"])
def test_sla_fused_captures_into_a_cuda_graph(kernel, shape):
    q, k, v = rand_qkv(shape, torch.bfloat16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            linear_attention(q, k, v)  # warm-up outside the capture (torch's recipe)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = linear_attention(q, k, v)
    for seed in (1, 2):
        for dst, src in zip((q, k, v), rand_qkv(shape, torch.bfloat16, seed=seed)):
            dst.copy_(src)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, linear_attention(q, k, v)), f"replay {seed}"


def test_sla_fused_bad_inputs_give_one_line_errors(kernel):
    q, k, v = rand_qkv((2, 10, 2, 8, 8), torch.float32)
    wide = torch.zeros(1, 4, 1, 129, device="cuda")
    for args, match in [((q.double(), k.double(), v.double()), "float32, float16 or bfloat16"),
                        ((wide, wide, wide), "head dims must be 1..128"),
                        ((q, k[:, :5], v), "expected q, k")]:  # fmt: skip
        with pytest.raises(InputError, match=match) as error:
            linear_attention(*args)
        assert "\n" not in str(error.value)
    # mixed dtypes (an fp32 k from autocast's promotion) run in q's dtype; non-contiguous inputs are copied
    out = linear_attention(q.half(), k, v.transpose(0, 1).contiguous().transpose(0, 1).half())
    assert out.dtype == torch.float16
    expected = reference64(q.half(), k.half(), v.half())
    assert_rel_close(out.double(), expected, TOLERANCE[torch.float16], "mixed dtypes")


# ------------------------------------------------------------------------------------------ whole models
def small_random_model(name: str):
    """testing.calibrated_random_model on the GPU (default statistics leave Swin / CSwin ill-conditioned)."""
    return calibrated_random_model(name).cuda()


MODELS = ["slab_deit_tiny_patch16_224", "slab_swin_tiny_patch4_224", "slab_cswin_tiny_224", "slab_pvt_tiny"]


@pytest.mark.parametrize("name", MODELS)
def test_sla_fused_model_logits_match_the_matmul_form(kernel, name, no_tf32):
    """fp32: fused == MatMul form (cuBLAS and cuDNN fp32, TF32 off: the two forms run different convs) within
    2e-4 of max |logit|. bf16 autocast: the
    fused model's error against the fp32 logits is at most twice the MatMul form's (+1e-3): the fused core
    rounds its output to bf16 once per layer where the MatMul form adds the DWC branch in fp32 first."""
    model = small_random_model(name)
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.no_grad():
        with fused_sla("never"):
            unfused = model(x)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                unfused_bf16 = model(x).float()
        fused = model(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fused_bf16 = model(x).float()
            names = slab_kernels(lambda: model(x))
    assert names, "the fused kernel did not run"
    assert_rel_close(fused, unfused, 2e-4, f"{name} fp32")
    scale = unfused.abs().max()
    err_fused = ((fused_bf16 - unfused).abs().max() / scale).item()
    err_unfused = ((unfused_bf16 - unfused).abs().max() / scale).item()
    assert err_fused <= 2 * err_unfused + 1e-3, (err_fused, err_unfused)


def test_sla_fused_compiled_model_equals_eager(kernel):
    model = small_random_model("slab_deit_tiny_patch16_224")
    x = torch.randn(8, 3, 224, 224, device="cuda")
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        eager = model(x)
        got = compiled(x)
        kinds = slab_kernels(lambda: compiled(x))
    assert kinds.count("fused") + kinds.count("apply") == 12, kinds  # one opaque call per block, on CUDA
    assert_rel_close(got, eager, 2e-4, "compiled vs eager")


def test_sla_fused_auto_mode_sends_unsupported_inputs_to_the_matmul_form(kernel):
    model = small_random_model("slab_deit_tiny_patch16_224").double()
    x = torch.randn(2, 3, 224, 224, device="cuda", dtype=torch.float64)
    with torch.no_grad():
        assert not slab_kernels(lambda: model(x))  # float64: no error, no fused kernel
    model.float()
    x = x.float().requires_grad_()
    assert not slab_kernels(lambda: model(x).sum().backward())  # training: the autograd-able form
