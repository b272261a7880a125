"""Every zoo model built straight on the GPU (timm's factory kwargs device= / dtype=): all parameters and
buffers there, fp32 logits equal to the CPU model's with the same (calibrated random) weights, and a bf16
model that runs in bf16 (SLA's fp32 core inside) with finite logits. The CPU side of the contract:
tests/models/test_zoo_contract.py."""

from __future__ import annotations

import pytest
import timm
import torch

import slab_edge  # noqa: F401  registers the zoo
from slab_edge import testing
from slab_edge.models import list_models

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("needs_cuda")]


@pytest.mark.parametrize("name", list_models())
def test_model_built_on_gpu_matches_cpu(name, no_tf32):
    cpu = testing.calibrated_random_model(name)  # default BN statistics: ill-conditioned, bf16 overflows
    gpu = timm.create_model(name, device="cuda").eval()
    assert {t.device.type for t in [*gpu.parameters(), *gpu.buffers()]} == {"cuda"}
    gpu.load_state_dict(cpu.state_dict(), strict=True)
    x = torch.randn(2, *cpu.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = cpu(x)
        out = gpu(x.cuda())
    testing.assert_rel_close(out.cpu(), ref, 1e-4, f"{name} fp32 GPU vs CPU")

    half = timm.create_model(name, device="cuda", dtype=torch.bfloat16).eval()
    floating = {t.dtype for t in [*half.parameters(), *half.buffers()] if t.is_floating_point()}
    assert floating == {torch.bfloat16}
    half.load_state_dict(cpu.state_dict(), strict=True)  # the calibrated weights, cast to bfloat16
    with torch.no_grad():
        logits = half(x.cuda().bfloat16())
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
