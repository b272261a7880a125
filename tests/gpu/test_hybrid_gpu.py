"""Hybrid SLAB-LMs (attention_pattern "LLLS") on CUDA: fla kernels in the linear layers beside SDPA in the
softmax layer, against the PyTorch chunk form; prefill on the GPU, decode steps, and the CPU model.

    python3 -m pytest tests/gpu -m gpu -k hybrid -q     # GPU machine, fla staged (DEVICE.md)

Heads of 64 x 64 as in test_fla_equivalence.py (each new head size makes fla autotune and compile again).
fla runs some float32 products in TF32, so the "fp32" tolerances are ~1e-3 relative, not 1e-6.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slab_edge.testing import assert_rel_close

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("needs_cuda_and_fla")]

RTOL, GRAD_RTOL = 5e-3, 2e-2  # fp32 with TF32 inside fla (test_fla_equivalence.py: 5e-3 / 2 x 1e-2)


def hybrid(attention: str, norm: str = "rmsnorm", seed: int = 0):
    """3:1 hybrid, width 256: SLA and softmax heads 256 / 4 = 64; GLA 4 heads with d_k = d (test-only)."""
    from slab_edge.models.slab_lm import create_slab_lm

    torch.manual_seed(seed)
    return create_slab_lm(
        "tiny",
        attention=attention,
        attention_pattern="LLLS",
        num_layers=4,
        dim=256,
        norm=norm,
        gla_expand_k=1.0,
    )


def set_linear_mode(model, mode: str) -> None:
    """fla | chunk | recurrent for the linear layers; the softmax layer has one path (SDPA)."""
    for layer in model.layers:
        if hasattr(layer.attn, "mode"):
            layer.attn.mode = mode


@pytest.mark.parametrize("attention", ["sla", "gla"])
def test_hybrid_training_step_fla_vs_pytorch_chunk(attention):
    """Forward + backward of the hybrid, fp32: fla in the linear layers == the PyTorch chunk form."""
    model = hybrid(attention).cuda().train()
    assert model.config.layer_attention() == (attention,) * 3 + ("softmax",)
    ids = torch.randint(0, 256, (4, 200), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    results = []
    for mode in ("fla", "chunk"):
        set_linear_mode(model, mode)
        model.zero_grad()
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, 256), ids[:, 1:].reshape(-1))
        loss.backward()
        results.append((logits.detach(), [p.grad.detach().clone() for p in model.parameters()]))
    (lf, gf), (lc, gc) = results
    assert_rel_close(lf, lc, RTOL, "logits")
    for (name, _), a, b in zip(model.named_parameters(), gf, gc):
        assert_rel_close(a, b, GRAD_RTOL, f"grad {name}")


@pytest.mark.parametrize("norm", ["rmsnorm", "prepbn"])
@pytest.mark.parametrize("attention", ["sla", "gla"])
def test_hybrid_prefill_and_steps_on_cuda_match_the_cpu_model(attention, norm):
    """Eval mode, fp32: CUDA prefill (fla + SDPA, auto mode) and 16 recurrent steps vs the CPU chunk form;
    the mixed state (recurrent states of layers 0-2, KV cache of layer 3) is compared tensor by tensor."""
    from slab_edge.testing import randomize_norm_statistics

    cpu = hybrid(attention, norm).eval()
    if norm == "prepbn":
        randomize_norm_statistics(cpu)
    gpu = hybrid(attention, norm).cuda().eval()
    gpu.load_state_dict(cpu.state_dict(), strict=True)
    set_linear_mode(cpu, "chunk")
    gen = torch.Generator().manual_seed(1)
    prompt, steps = (
        torch.randint(0, 256, (2, 150), generator=gen),
        torch.randint(0, 256, (16, 2), generator=gen),
    )
    with torch.no_grad():
        ref_logits, ref_state = cpu.prefill(prompt)
        logits, state = gpu.prefill(prompt.cuda())
        assert_rel_close(logits.cpu(), ref_logits, RTOL, "prefill logits")
        for name, a, b in zip(gpu.state_names(), state, ref_state):
            assert a.shape == b.shape, name
            assert_rel_close(a.cpu(), b, RTOL, f"state {name}")
        assert state[-1].shape[2] == 150  # the KV cache holds the prompt
        for token in steps:
            ref_step, ref_state = cpu.step(token, ref_state)
            step_logits, state = gpu.step(token.cuda(), state)
            assert_rel_close(step_logits.cpu(), ref_step, RTOL, "step logits")
    assert state[-1].shape[2] == 150 + 16  # one position per decoded token


@pytest.mark.parametrize("attention", ["sla", "gla"])
def test_hybrid_bf16_generation_on_cuda_runs_and_is_deterministic(attention):
    """bf16 autocast greedy generation (the decode benchmark's setting): finite, deterministic, and the
    prompt's logits agree normwise with fp32."""
    model = hybrid(attention).cuda().eval()
    prompt = torch.randint(0, 256, (1, 64), device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a = model.generate(prompt, max_new_tokens=32)
        b = model.generate(prompt, max_new_tokens=32)
        with torch.no_grad():
            low = model(prompt).float()
    assert a.shape == (1, 96) and torch.equal(a, b)
    with torch.no_grad():
        full = model(prompt).float()
    assert torch.isfinite(low).all()
    err, scale = (low - full).norm().item(), full.norm().item()
    assert err <= 5e-2 * scale, f"bf16 vs fp32 logits: normwise error {err / scale:.3g}"
