"""Causal simplified linear attention (SLA) for language models.

Layer maths, per head (REFERENCE §1 and §5): q, k, v = split(x W_qkv); Q, K = ReLU(q), ReLU(k);
    S_t = S_{t-1} + K_t^T v_t,  z_t = z_{t-1} + K_t,  o_t = Q_t S_t / (Q_t . z_t + eps)
in float32; o += CausalDWConv(v) (a depthwise conv over time of kernel 4 on the value channels);
merge heads; output projection.

What replaces the vision SLA's learnable positional encoding. Vision SLA adds a learnable absolute
encoding P [1, N, C] to k, built for one fixed token grid. A causal LM cannot have that without a length
limit, and an absolute position would break the constant-size decoding state. Here order comes from two
places instead: causality itself (o_t only sums tokens <= t) and the causal depthwise convolution on v,
which sees the last `conv_size` tokens at fixed relative offsets and so carries local order and position
(as the vision DWC carries local spatial structure, and as fla's ShortConvolution does for its models).
There are no absolute positions anywhere, so there is no length limit: prefill and decoding work for any T
with a state whose size does not depend on T.

The conv is per channel (C = H * d groups, like ShortConvolution) rather than one d-channel conv shared by
all heads (the vision DWC): the same cost, and its decoding state [B, C, W-1] is per channel either way.

Recurrent state (a flat tuple, export-friendly): S [B, H, d, d] float32, z [B, H, d] float32,
conv [B, C, W-1] (the last W-1 value vectors, oldest first).
"""

from __future__ import annotations

import torch
from torch import nn

from slab_edge.ops.backend import resolve_mode
from slab_edge.ops.causal_sla import CAUSAL_SLA_EPS, causal_sla, causal_sla_step


class CausalSimplifiedLinearAttention(nn.Module):
    """Causal SLA token mixer. Input [B, T, C]; output [B, T, C] (+ state).

    Parameters: qkv (fused, C -> 3C), dwc (depthwise Conv1d over time on v), proj (C -> C).

    Args:
        dim: C.
        num_heads: H; head dim d = C / H (both key and value).
        conv_size: W, the kernel of the causal depthwise conv on v (4).
        qkv_bias: bias on the qkv projection (LLaMA style: none; folding a norm adds one).
        proj_bias: bias on the output projection.
        eps: normalizer eps.
        mode: "auto" (fla on CUDA when installed, else chunk) | "chunk" | "recurrent" | "fla".
    """

    state_names = ("S", "z", "conv")

    def __init__(
        self,
        dim: int,
        num_heads: int,
        conv_size: int = 4,
        qkv_bias: bool = False,
        proj_bias: bool = False,
        eps: float = CAUSAL_SLA_EPS,
        mode: str = "auto",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if conv_size < 1:
            raise ValueError(f"conv_size must be >= 1, got {conv_size}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.conv_size, self.eps, self.mode = conv_size, eps, mode
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.dwc = nn.Conv1d(dim, dim, conv_size, groups=dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    @property
    def output_linear(self) -> nn.Linear:
        """The Linear that writes the mixer's output (into the residual stream)."""
        return self.proj

    @property
    def input_linear(self) -> list[nn.Linear]:
        """The Linear layers that read the mixer's input (the ones a preceding norm folds into)."""
        return [self.qkv]

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Zero state: S [B, H, d, d] fp32, z [B, H, d] fp32, conv [B, C, W-1] in `dtype` (default fp32)."""
        h, d = self.num_heads, self.head_dim
        return (
            torch.zeros(batch_size, h, d, d, device=device),
            torch.zeros(batch_size, h, d, device=device),
            torch.zeros(batch_size, self.dim, self.conv_size - 1, device=device, dtype=dtype),
        )

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        shape = (*x.shape[:-1], self.num_heads, self.head_dim)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape)  # [..., H, d]

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None, output_final_state: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """x [B, T, C], optional state from earlier tokens -> (y [B, T, C], state after x or None)."""
        q, k, v = self._split(x)  # [B, T, H, d]
        mode = resolve_mode(self.mode, x)
        o, new_state = causal_sla(
            q, k, v, self.dwc.weight, self.dwc.bias, state, output_final_state, mode=mode, eps=self.eps
        )
        return self.proj(o.reshape(x.shape).to(x.dtype)), new_state

    def step(
        self, x: torch.Tensor, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """One token: x [B, C], state -> (y [B, C], new state)."""
        q, k, v = self._split(x)  # [B, H, d]
        o, state = causal_sla_step(q, k, v, self.dwc.weight, self.dwc.bias, state, eps=self.eps)
        return self.proj(o.reshape(x.shape).to(x.dtype)), state

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, conv_size={self.conv_size}, mode={self.mode}"
