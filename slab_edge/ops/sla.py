"""Simplified linear attention (SLA) core, non-causal (vision).

Written with MatMul / ReduceSum / Div only so that it exports to ONNX without Einsum, and computed in
float32 even under autocast: the K^T V product and the normalizer overflow in fp16.
"""

from __future__ import annotations

import torch

SLA_EPS = 1e-6


def use_linear_order(num_tokens: int, head_dim: int) -> bool:
    """True when Q (K^T V) is cheaper than (Q K^T) V: N*N*2d > d*d*2N, i.e. N > d."""
    return num_tokens * num_tokens * 2 * head_dim > head_dim * head_dim * 2 * num_tokens


def sla_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = SLA_EPS) -> torch.Tensor:
    """ReLU-kernel linear attention with a per-query normalizer, no softmax and no scale.

    Args:
        q: [..., N, d] queries after the ReLU feature map.
        k: [..., N, d] keys after the ReLU feature map.
        v: [..., N, d_v] values.
        eps: added to the normalizer q_i . sum_j k_j.

    Returns:
        [..., N, d_v] in float32: (q_i . sum_j k_j v_j^T) / (q_i . sum_j k_j + eps).
    """
    if (
        torch.jit.is_scripting()
    ):  # TorchScript needs a constant autocast device; scripted graphs run unautocast
        return _sla_core_fp32(q, k, v, eps)
    if not torch.amp.is_autocast_available(q.device.type):  # e.g. the meta device: nothing to switch off
        return _sla_core_fp32(q, k, v, eps)
    with torch.autocast(device_type=q.device.type, enabled=False):
        return _sla_core_fp32(q, k, v, eps)


def _sla_core_fp32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    q, k, v = q.float(), k.float(), v.float()
    k_sum = k.sum(dim=-2, keepdim=True)  # [..., 1, d]
    z = q @ k_sum.transpose(-2, -1) + eps  # [..., N, 1]
    if use_linear_order(q.shape[-2], q.shape[-1]):
        out = q @ (k.transpose(-2, -1) @ v)  # [..., N, d] @ [..., d, d_v]
    else:
        out = (q @ k.transpose(-2, -1)) @ v  # [..., N, N] @ [..., N, d_v]
    return out / z


def sla_core_channels_first(
    q_t: torch.Tensor, k: torch.Tensor, v_t: torch.Tensor, eps: float = SLA_EPS
) -> torch.Tensor:
    """sla_core in the channels-first layout: the transposed output from transposed queries and values.

    Args:
        q_t: [..., d, N] queries after the ReLU feature map, channels first.
        k: [..., N, d] keys after the ReLU feature map.
        v_t: [..., d_v, N] values, channels first (the layout a depthwise conv on V reads).
        eps: added to the normalizer q_i . sum_j k_j.

    Returns:
        [..., d_v, N] in float32, equal to sla_core(q, k, v).transpose(-2, -1). Computing it this way needs no
        transpose of the normalizer and lets a model read V once for both the core and its DWC branch: the
        exported graph has half the Transposes of the token-first form.
    """
    if torch.jit.is_scripting():
        return _sla_core_channels_first_fp32(q_t, k, v_t, eps)
    if not torch.amp.is_autocast_available(q_t.device.type):  # e.g. the meta device
        return _sla_core_channels_first_fp32(q_t, k, v_t, eps)
    with torch.autocast(device_type=q_t.device.type, enabled=False):
        return _sla_core_channels_first_fp32(q_t, k, v_t, eps)


def _sla_core_channels_first_fp32(
    q_t: torch.Tensor, k: torch.Tensor, v_t: torch.Tensor, eps: float
) -> torch.Tensor:
    q_t, k, v_t = q_t.float(), k.float(), v_t.float()
    k_sum = k.sum(dim=-2, keepdim=True)  # [..., 1, d]
    z = k_sum @ q_t + eps  # [..., 1, N]
    if use_linear_order(q_t.shape[-1], q_t.shape[-2]):
        out = (v_t @ k) @ q_t  # [..., d_v, d] @ [..., d, N]
    else:
        out = v_t @ (k @ q_t)  # [..., d_v, N] @ [..., N, N]
    return out / z


def sla_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = SLA_EPS) -> torch.Tensor:
    """Element-wise definition in float64, for tests: O_i = sum_j (q_i.k_j) v_j / (sum_j q_i.k_j + eps)."""
    q, k, v = q.double(), k.double(), v.double()
    scores = torch.einsum("...id,...jd->...ij", q, k)
    return torch.einsum("...ij,...jv->...iv", scores, v) / (scores.sum(-1, keepdim=True) + eps)
