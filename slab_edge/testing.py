"""Assertions shared by the test suite (imports torch; not part of the torch-free runtime)."""

from __future__ import annotations

import torch
from torch import nn


def assert_rel_close(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str = "", floor: float = 1e-30
) -> None:
    """max |actual - expected| <= rtol * max(max |expected|, floor): errors relative to magnitude.

    `expected` is cast to `actual`'s dtype first; non-finite values in `actual` fail.
    """
    expected = expected.to(actual.dtype)
    scale = expected.abs().max().clamp(min=floor)
    err = (actual - expected).abs().max()
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol:g} x magnitude {scale:.3g}"


@torch.no_grad()
def randomize_norm_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """In place: BN running_mean U(-.5,.5), running_var U(.5,2), weight U(.5,1.5), bias U(-.2,.2);
    RepBN alpha U(.5,1.5). Returns the model. Default statistics (mean 0, var 1) hide fold bugs."""
    from slab_edge.layers.norms import RepBN

    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            c = module.num_features
            module.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            module.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            if module.weight is not None:
                module.weight.copy_(torch.rand(c, generator=g) + 0.5)
                module.bias.copy_((torch.rand(c, generator=g) - 0.5) * 0.4)
        elif isinstance(module, RepBN):
            module.alpha.copy_(torch.rand(1, generator=g) + 0.5)
    return model


@torch.no_grad()
def randomize_parameters(module: nn.Module, std: float = 0.3) -> nn.Module:
    """Draw every parameter (biases and norm weights included) from N(0, std), in place, from torch's
    global generator: layer tests then exercise every term, not the init's zeros and ones. Returns module."""
    for p in module.parameters():
        p.normal_(0, std)
    return module


#: max |fused SLA kernel - float64 reference| / max |reference| on a GPU, by I/O dtype: the output's rounding
#: (half an ulp of the largest value: 2^-24 / 2^-11 / 2^-8) plus 1e-4 for the tensor cores' fp32 accumulation,
#: whose adds truncate (up to ~400 MMA steps feed one accumulator at N = 3136: <= 400 * 2^-23 ~ 5e-5). Plain
#: TF32 inputs (errors near 2^-11) fail the fp32 bound.
def calibrated_random_model(name: str, seed: int = 0) -> nn.Module:
    """A random-weight zoo model (eval, CPU, float32) fit for whole-model numerical comparisons: parameters
    nudged by N(0, 0.02) (the zero-initialised positional encodings get values too), every residual branch's
    output projection (the Linear `proj` after attention, the MLP's `fc2`) scaled by 1 / sqrt(2 * blocks),
    and BatchNorm statistics recalibrated on two batches of random images. Without this, deep random models
    are ill-conditioned: with the default statistics (mean 0, var 1, RepBN alpha 1) SLAB-Swin / CSwin logits
    reach ~5e3 and DeiT-S / PVT-S activations 1e19 (bfloat16 overflows on the GPU); recalibrated but
    unscaled, float32 and float64 logits of SLAB-Swin-S differ by 16 %."""
    import slab_edge
    from slab_edge.train.recalibrate import recalibrate_bn

    torch.manual_seed(seed)
    model = slab_edge.create_model(name).eval()
    outputs = [
        m
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in ("proj", "fc2")
    ]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        for layer in outputs:
            layer.weight.mul_(len(outputs) ** -0.5)  # two per block: 1 / sqrt(2 * blocks)
    gen = torch.Generator().manual_seed(seed + 1)
    size = model.pretrained_cfg["input_size"]
    recalibrate_bn(model, [torch.randn(4, *size, generator=gen) for _ in range(2)])
    return model.eval()


FUSED_SLA_GPU_TOLERANCE = {
    torch.float32: 1e-4,
    torch.float16: 2.0**-11 + 1e-4,
    torch.bfloat16: 2.0**-8 + 1e-4,
}


def parity_lm(attention: str, norm: str, seed: int = 0) -> nn.Module:
    """A tiny SLAB-LM for export parity: init std 0.1 (clear greedy margins), random BN statistics, eval.

    attention "sla" | "gla" | "softmax", or "hybrid": the 1:1 sla:softmax hybrid (attention_pattern "LS":
    a recurrent state and a KV cache side by side).
    """
    from slab_edge.models.slab_lm import create_slab_lm

    torch.manual_seed(seed)
    kinds = (
        {"attention": "sla", "attention_pattern": "LS"} if attention == "hybrid" else {"attention": attention}
    )
    model = create_slab_lm("tiny", norm=norm, init_std=0.1, **kinds)
    return randomize_norm_statistics(model, seed).eval()


#: SLAB-LM config overrides the decode tests run: each attention alone, and the 3:1 hybrids
#: (attention_pattern: recurrent states beside a KV cache)
LM_ATTENTION_CASES: dict[str, dict] = {
    "sla": {"attention": "sla"},
    "gla": {"attention": "gla"},
    "softmax": {"attention": "softmax"},
    "sla-LLLS": {"attention": "sla", "attention_pattern": "LLLS", "num_layers": 4},
    "gla-LLLS": {"attention": "gla", "attention_pattern": "LLLS", "num_layers": 4},
}


#: torch dtype -> ONNX elem type of the fused SLA node's I/O (onnx.TensorProto FLOAT / FLOAT16 / BFLOAT16)
SLA_NODE_TYPES = {torch.float32: 1, torch.float16: 10, torch.bfloat16: 16}
#: a fused SLA kernel vs the float32 reference on the same inputs, max |error| / max |reference|: float32 sums
#: in another order, then one rounding of the output (fp16: 2^-11 relative, bf16: 2^-8) plus the reference's
SLA_KERNEL_TOLERANCE = {torch.float32: 1e-5, torch.float16: 1.5e-3, torch.bfloat16: 8e-3}


def sla_inputs(b: int, n: int, h: int, d: int, dv: int, dtype=torch.float32, seed: int = 0):
    """Random q, k [B, N, H, D] after ReLU and v [B, N, H, Dv] in `dtype` (CPU)."""
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, n, h, d, generator=gen).relu().to(dtype) for _ in range(2))
    return q, k, torch.randn(b, n, h, dv, generator=gen).to(dtype)


def run_sla_node(session, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Run an ONNX Runtime session of `slab_edge.export.custom_ops.node_model` on CPU torch tensors of any
    dtype (bfloat16 through OrtValues: numpy has no bfloat16). Returns `out` [B, N, H, Dv] on the CPU."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto

    if q.dtype != torch.bfloat16:
        return torch.from_numpy(session.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})[0])
    as_bf16 = lambda array: ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array, TensorProto.BFLOAT16)
    binding = session.io_binding()
    for name, t in zip("qkv", (q, k, v)):
        binding.bind_ortvalue_input(name, as_bf16(t.contiguous().view(torch.int16).numpy().view(np.uint16)))
    out = np.zeros((*q.shape[:3], v.shape[-1]), np.uint16)
    binding.bind_ortvalue_output("out", as_bf16(out))
    session.run_with_iobinding(binding)
    return torch.from_numpy(out.view(np.int16)).view(torch.bfloat16)


def ort_node_events(profile_path) -> set[tuple[str, str]]:
    """{(op type, execution provider)} of the node events in an ONNX Runtime profile JSON."""
    import json

    with open(profile_path) as f:
        events = json.load(f)
    return {(e["args"]["op_name"], e["args"]["provider"]) for e in events if e.get("cat") == "Node"}
