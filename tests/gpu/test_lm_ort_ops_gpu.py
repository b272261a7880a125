"""export-lm --ops ort on ONNX Runtime's CUDA EP: the LinearAttention / CausalConvWithState graphs run on the
GPU (the contrib nodes placed on CUDAExecutionProvider, checked in ORT's profile) and agree with the CPU EP
and with PyTorch: prefill logits and states, decode-step logits, 64 greedy tokens.

Needs onnxruntime-gpu (DEVICE.md: stage onnxruntime-gpu==1.31.1, then PYTHONPATH=/tmp/site:$PWD):
    python3 -m pytest tests/gpu -m gpu -q -k ort_ops
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slab_edge.export.lm import LOGIT_TOLERANCE, export_lm
from slab_edge.models.slab_lm import fold_lm
from slab_edge.runtime.generate import open_lm
from slab_edge.testing import parity_lm

pytestmark = pytest.mark.gpu
#: the contrib nodes of each model's graphs
CONTRIB_OPS = {"gla": {"LinearAttention"}, "sla": {"LinearAttention", "CausalConvWithState"}}
#: fp32 GEMMs without TF32 (the CUDA EP's default would use TF32 and loosen parity to ~1e-3)
CUDA = {"provider": "cuda", "provider_options": {"use_tf32": 0}}


@pytest.fixture(scope="module")
def ort_cuda():
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # the CUDA / cuDNN libraries of the pip wheels
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(
            f"onnxruntime {ort.__version__} has no CUDAExecutionProvider: install onnxruntime-gpu "
            "(DEVICE.md: stage onnxruntime-gpu==1.31.1)"
        )
    return ort


@pytest.fixture(scope="module")
def exports(tmp_path_factory, ort_cuda):
    folder = tmp_path_factory.mktemp("lm_ort_gpu")
    simplify = importlib.util.find_spec("onnxslim") is not None  # the GPU machine may lack onnxslim
    done = {}
    for attention in ("gla", "sla", "hybrid"):
        model = parity_lm(attention, "prepbn")
        out = folder / attention
        # exported on the CPU; the export's own parity check runs on ONNX Runtime's CPU EP
        report = export_lm(model, out, meta={"tokenizer": "byte"}, simplify=simplify, ops="ort")
        assert report.greedy_match == (64, 64) and report.step_max_abs <= LOGIT_TOLERANCE
        done[attention] = (model, out)
    return done


@pytest.mark.parametrize("attention", ["gla", "sla", "hybrid"])
def test_ort_ops_on_cuda_match_cpu_and_pytorch(exports, attention):
    model, out = exports[attention]
    folded, _ = fold_lm(model)
    prompt = torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(3))  # 5 chunks of 64
    with open_lm(out, threads=2) as cpu, open_lm(out, **CUDA) as gpu:
        assert gpu.decode_session.providers[0] == "CUDAExecutionProvider"
        logits_c, state_c = cpu.prefill(prompt.numpy())
        logits_g, state_g = gpu.prefill(prompt.numpy())
        with torch.no_grad():
            ref, ref_state = folded.prefill(prompt[None])
        np.testing.assert_allclose(logits_g, logits_c, atol=LOGIT_TOLERANCE)
        np.testing.assert_allclose(logits_g, ref[0, -1].numpy(), atol=LOGIT_TOLERANCE)
        for spec in gpu.layout:
            a, b = state_g[spec.input], state_c[spec.input]
            assert np.abs(a - b).max() <= 1e-5 * max(np.abs(b).max(), 1.0), spec.input
        worst = 0.0
        for token in torch.randint(0, 256, (32,), generator=torch.Generator().manual_seed(4)).tolist():
            logits_c, state_c = cpu.step(token, state_c)
            logits_g, state_g = gpu.step(token, state_g)
            with torch.no_grad():
                ref, ref_state = folded.step(torch.tensor([token]), ref_state)
            worst = max(worst, float(np.abs(logits_g - ref[0].numpy()).max()))
            np.testing.assert_allclose(logits_g, logits_c, atol=LOGIT_TOLERANCE)
        assert worst <= LOGIT_TOLERANCE
        with torch.no_grad():
            ref_ids = folded.generate(prompt[None, :12], max_new_tokens=64)[0, 12:].tolist()
        assert gpu.generate(prompt[:12].numpy(), 64, stop_at_eos=False).tokens == ref_ids
        assert cpu.generate(prompt[:12].numpy(), 64, stop_at_eos=False).tokens == ref_ids


@pytest.mark.parametrize("attention", ["gla", "sla"])
@pytest.mark.parametrize("graph", ["prefill.onnx", "decode.onnx"])
def test_contrib_nodes_run_on_the_cuda_provider(exports, ort_cuda, attention, graph, tmp_path):
    _, out = exports[attention]
    options = ort_cuda.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    session = ort_cuda.InferenceSession(
        str(out / graph),
        options,
        providers=[("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"],
    )
    with open_lm(out) as lm:
        feeds = {"input_ids": np.array([[1, 2, 3] if graph == "prefill.onnx" else [1]], np.int64)}
        feeds.update(lm.initial_state())
    session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    placed = {
        e["args"]["op_name"]: e["args"].get("provider")
        for e in events
        if e.get("cat") == "Node" and e.get("args", {}).get("op_name") in CONTRIB_OPS[attention]
    }
    assert set(placed) == CONTRIB_OPS[attention], f"contrib nodes seen in the profile: {placed}"
    assert set(placed.values()) == {"CUDAExecutionProvider"}, placed
