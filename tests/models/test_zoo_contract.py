"""Every zoo model honours timm's factory kwargs `device` / `dtype` (parameters AND buffers), and the
classifier that reset_classifier builds follows the model's device, dtype and mode.

timm's own tests/test_models.py (run on the zoo by tests/run_timm_suite.py) checks the device with float32
only; this adds a non-default dtype and the integer buffers that must keep theirs.
"""

from __future__ import annotations

import pytest
import timm
import torch

import slab_edge  # noqa: F401  registers the zoo
from slab_edge.models import list_models


def _tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*model.named_parameters(), *model.named_buffers()]


@pytest.mark.parametrize("name", list_models())
def test_factory_device_and_dtype_reach_every_tensor(name):
    model = timm.create_model(name, device="meta", dtype=torch.bfloat16)
    tensors = _tensors(model)
    assert tensors
    assert [n for n, t in tensors if t.device.type != "meta"] == []
    floating = [n for n, t in tensors if t.is_floating_point()]
    assert floating and [n for n in floating if dict(tensors)[n].dtype != torch.bfloat16] == []
    # counters and indices stay integers (BN num_batches_tracked, progressive-norm schedules, Swin indices)
    assert {t.dtype for _, t in tensors if not t.is_floating_point()} <= {torch.int64}
    model.train(False)
    model.reset_classifier(3)
    head = model.get_classifier()
    assert head.weight.device.type == "meta" and head.weight.dtype == torch.bfloat16 and not head.training


def test_float64_model_runs_in_float64():
    model = timm.create_model("slab_deit_digits", dtype=torch.float64).eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
    assert out.dtype == torch.float64 and out.shape == (2, 10) and torch.isfinite(out).all()
    assert {t.dtype for _, t in _tensors(model) if t.is_floating_point()} == {torch.float64}


@pytest.mark.parametrize("name", list_models())
def test_folded_blocks_read_a_contiguous_residual_stream(name):
    """With the norms folded away nothing re-lays out the patch embedding's output: a transposed [B, N, C]
    view would become the layout of the whole residual stream (every add and Linear input a strided copy:
    SLAB-DeiT-T ran at 0.69x of DeiT-T on the H200 for it). Every block's input must be contiguous."""
    from slab_edge.layers.reparam import reparameterize_model

    model = reparameterize_model(timm.create_model(name)).eval()
    seen: dict[str, bool] = {}

    def record(name: str):
        def hook(_module, args) -> None:  # a pre-hook that returns something replaces the inputs
            seen.setdefault(name, args[0].is_contiguous())

        return hook

    for module_name, module in model.named_modules():
        if type(module).__name__.endswith("Block"):
            module.register_forward_pre_hook(record(module_name))
    with torch.no_grad():
        model(torch.randn(1, *model.pretrained_cfg["input_size"]))
    assert seen and [n for n, contiguous in seen.items() if not contiguous] == []
