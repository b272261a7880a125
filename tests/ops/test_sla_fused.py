"""The fused SLA operator's contract (torch.ops.slab.linear_attention) and the SLA layer's fused path."""

from __future__ import annotations

import warnings

import pytest
import torch

from slab_edge.ops import sla_fused
from slab_edge.ops.sla import sla_reference
from slab_edge.ops.sla_fused import fused_sla, linear_attention, use_fused
from slab_edge.testing import assert_rel_close


def bnhd(b: int, n: int, h: int, d: int, dv: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, n, h, d, generator=gen).relu() for _ in range(2))
    return q, k, torch.randn(b, n, h, dv, generator=gen)


@pytest.mark.parametrize("shape", [(2, 7, 3, 5, 4), (1, 196, 3, 64, 64), (2, 1, 1, 1, 1)], ids=str)
def test_operator_matches_the_elementwise_definition(shape):
    q, k, v = bnhd(*shape)
    out = linear_attention(q, k, v, 1e-6)
    expected = sla_reference(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    assert out.shape == v.shape and out.is_contiguous()
    assert_rel_close(out.double(), expected, 1e-5, "linear_attention")
    torch.library.opcheck(linear_attention, (q, k, v, 1e-6))


def test_operator_keeps_the_io_dtype_and_computes_in_float32():
    q, k, v = (t.half() * 30 for t in bnhd(1, 300, 2, 16, 16))  # K^T V sums overflow fp16 (> 65504)
    out = linear_attention(q, k, v)
    expected = linear_attention(q.float(), k.float(), v.float())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert_rel_close(out.float(), expected, 2e-3, "fp16 I/O")


def test_fused_mode_policy(monkeypatch):
    q, k, v = bnhd(1, 4, 1, 2, 2)
    assert not use_fused(q, k, v)  # auto: no CPU kernel is registered, the MatMul form runs
    with fused_sla("always"):
        assert use_fused(q, k, v)
    with fused_sla("never"):
        assert not use_fused(q, k, v)
    with pytest.raises(ValueError, match="fused SLA mode"), fused_sla("sometimes"):
        pass
    # auto mode with a kernel for the device: only inputs the native kernels take
    monkeypatch.setattr(sla_fused, "_kernel_devices", {"cpu"})
    assert use_fused(q, k, v) and use_fused(q, k, v, head_dim=128)
    assert not use_fused(q, k, v, head_dim=129) and not use_fused(q.double(), k.double(), v.double())
    assert not use_fused(q.requires_grad_(), k, v)  # training keeps the autograd-able MatMul form


def test_a_cuda_kernel_that_cannot_be_loaded_falls_back_and_says_why_once(monkeypatch):
    from slab_edge.errors import BackendError
    from slab_edge.ops import sla_fused_cuda

    def no_library():
        raise BackendError("nvcc not found\n(second line)")

    monkeypatch.setattr(sla_fused, "_kernel_devices", set())
    monkeypatch.setattr(sla_fused, "_load_tried", set())
    monkeypatch.setattr(sla_fused_cuda, "library", no_library)
    reason = r"no CUDA kernel \(BackendError: nvcc not found\); SLA layers use the MatMul form"
    with pytest.warns(RuntimeWarning, match=reason):
        assert not sla_fused.load_kernel("cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not sla_fused.load_kernel("cuda")  # tried once: no second attempt, no second warning
    assert not sla_fused.load_kernel("cpu")


# CSwin: la_split_size 4 gives its SLA stages two stripe branches each (the official 56-28 use one)
SMALL_MODELS = {
    "slab_deit_tiny_patch16_224": ({"embed_dim": 48, "depth": 2}, 224),
    "slab_pvt_tiny": ({"img_size": 64}, 64),
    "slab_cswin_tiny_224": (
        {"img_size": 64, "embed_dim": 32, "depths": (1, 1, 1, 1), "la_split_size": (4, 4, 2, 2),
         "split_size": (1, 2, 2, 2)},
        64,
    ),
}  # fmt: skip


@pytest.mark.parametrize("model_name", list(SMALL_MODELS))
def test_sla_layers_give_the_same_logits_through_the_fused_operator(model_name):
    import slab_edge

    torch.manual_seed(0)
    kwargs, size = SMALL_MODELS[model_name]
    model = slab_edge.create_model(model_name, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # zero-initialised positional encodings get values too
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        reference = model(x)
        with fused_sla("always"):
            fused = model(x)
    assert_rel_close(fused, reference, 1e-5, model_name)


def test_the_fused_path_compiles_into_one_graph_holding_the_operator(monkeypatch):
    """torch.compile(fullgraph=True) traces use_fused and keeps linear_attention as one opaque call per layer
    (the CPU reference stands in for a device kernel; tests/gpu/test_sla_fused_gpu.py compiles on CUDA)."""
    import slab_edge

    monkeypatch.setattr(sla_fused, "_kernel_devices", {"cpu"})
    torch.manual_seed(0)
    model = slab_edge.create_model("slab_deit_tiny_patch16_224", embed_dim=48, depth=2).eval()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = model(x), compiled(x)
    ops = [n for g in graphs for n in g.graph.nodes if "slab.linear_attention" in str(n.target)]
    assert len(graphs) == 1 and len(ops) == 2
    assert_rel_close(got, expected, 1e-6, "compiled")
