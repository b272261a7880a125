"""The slab custom-op library on ONNX Runtime's CUDA execution provider (the `ort-cuda` build: the CUDA kernel
of sla_attention_cuda.cu launched on the EP's compute stream, workspace from the EP's allocator).

Run on the GPU machine with onnxruntime-gpu installed (DEVICE.md), from the repository root:

    python3 -m pytest tests/gpu -m gpu -k ort_cuda -q

The library is built first (nvcc: $SLAB_EDGE_NVCC or nvcc on PATH; the ONNX Runtime headers: a carried
toolchain folder in $SLAB_EDGE_TOOLCHAIN_DIR, or $SLAB_EDGE_ORT_INCLUDE, since no registry is reachable
there), together with the CPU library (`ort`) the CUDA results are compared with.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slab_edge.export.custom_ops import node_model
from slab_edge.ops.sla_fused import linear_attention_reference
from slab_edge.testing import SLA_KERNEL_TOLERANCE, SLA_NODE_TYPES, ort_node_events, run_sla_node, sla_inputs

pytestmark = pytest.mark.gpu

#: (B, N, H, D, Dv): SLAB-DeiT-T at 224 (bs 8) and 1024 (bs 4), SLAB-Swin-T stage 1 (56 x 56, d 32),
#: SLAB-PVT stage 1 (d 64), odd shapes, the maximum head dim
SHAPES = [
    (8, 196, 3, 64, 64),
    (4, 4096, 3, 64, 64),
    (2, 3136, 3, 32, 32),
    (2, 3136, 1, 64, 64),
    (1, 1, 1, 8, 8),
    (2, 7, 3, 12, 5),
    (1, 1000, 1, 128, 128),
]


@pytest.fixture(scope="session")
def ort_cuda():
    """(onnxruntime module, path of the ort-cuda library built for this GPU into the default build folder)."""
    import onnxruntime as ort

    from slab_edge.native import csrc_dir
    from slab_edge.native.build import TARGET_SOURCES, build

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (run on the GPU machine, see DEVICE.md)")
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)")
    missing = [s for s in TARGET_SOURCES["ort-cuda"].sources if not (csrc_dir() / s).is_file()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not in this tree yet (the CUDA part of issue 13 writes it)")
    return ort, build(["ort-cuda"])["ort-cuda"]


def cuda_session(ort, model, library, profile_prefix=None):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.register_custom_ops_library(str(library))
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    providers = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    return session


@pytest.mark.parametrize("dtype", list(SLA_NODE_TYPES), ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-N{}-H{}-D{}-Dv{}".format(*s))
def test_ort_cuda_kernel_matches_the_reference(ort_cuda, shape, dtype, tmp_path):
    ort, library = ort_cuda
    q, k, v = sla_inputs(*shape, dtype)
    session = cuda_session(
        ort, node_model(SLA_NODE_TYPES[dtype], function_body=False), library, tmp_path / "p"
    )
    out = run_sla_node(session, q, k, v)
    # the node ran on the CUDA EP (a CPU fallback would show CPUExecutionProvider)
    assert ("SlabLinearAttention", "CUDAExecutionProvider") in ort_node_events(session.end_profiling())
    expected = linear_attention_reference(q.float(), k.float(), v.float())
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    err = float((out.float() - expected).abs().max() / expected.abs().max())
    assert err <= SLA_KERNEL_TOLERANCE[dtype], f"max error {err:.2e}"


def test_ort_cuda_gives_the_cpu_kernels_result(ort_cuda, ort_ops_library):
    """The CUDA and CPU kernels of one node, fp32: the same up to float32 summation order."""
    ort, library = ort_cuda
    q, k, v = sla_inputs(4, 1000, 3, 64, 64, torch.float32)
    model = node_model(function_body=False)
    cuda = run_sla_node(cuda_session(ort, model, library), q, k, v)
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(ort_ops_library))
    cpu_session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    cpu = run_sla_node(cpu_session, q, k, v)
    assert float((cuda - cpu).abs().max() / cpu.abs().max()) <= 1e-5


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_ort_cuda_runs_a_custom_op_export(ort_cuda, precision, tmp_path, monkeypatch):
    """A reduced SLAB-DeiT exported with --custom-ops ort on the CUDA EP through the runtime, which picks the
    ort-cuda build by itself; logits vs PyTorch fp32 within the exporter's tolerances."""
    import slab_edge
    from slab_edge.export.checkpoint import prepare_model
    from slab_edge.export.onnx_export import export_model, parity_inputs, torch_logits
    from slab_edge.runtime import load

    ort, library = ort_cuda
    name, kwargs = "slab_deit_tiny_patch16_224", {"embed_dim": 48, "depth": 2, "num_classes": 10}
    torch.manual_seed(0)
    model = slab_edge.create_model(name, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # zero-initialised positional encodings get values too
    prepared = prepare_model(name, model=model, model_kwargs=kwargs)
    # no onnxslim on the GPU machine (DEVICE.md): the graph is not simplified, which changes no result
    (report,) = export_model(
        prepared, tmp_path / "m.onnx", [precision], simplify=False, custom_ops="ort", parity=False
    )
    monkeypatch.delenv("SLAB_EDGE_OPS_DIR", raising=False)
    batch = parity_inputs(report.metadata, batch=4)["random"]
    with load(report.path, provider="cuda", provider_options={"use_tf32": "0"}) as session:
        assert session.custom_op_library == library
        logits = session.run(batch)["logits"]
    reference = torch_logits(prepared.model, batch)
    tolerance = 1e-4 if precision == "fp32" else 1e-2 * float(np.abs(reference).max())
    assert float(np.abs(logits - reference).max()) <= tolerance
