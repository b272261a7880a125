"""Softmax attention baseline for SLAB-LM: LLaMA-style rotary positions, SDPA, and a KV cache.

State (a flat tuple): k_cache, v_cache [B, H, L, d] holding the rotated keys and the values of the L tokens
seen so far; it grows by one position per decoded token (the cost the linear-attention states avoid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rotary_cos_sin(
    positions: torch.Tensor, head_dim: int, base: float = 10_000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, d] (float32) for integer positions [T], in the rotate-half layout of LLaMA."""
    inv_freq = base ** (
        -torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    )
    angles = positions.float()[:, None] * inv_freq[None, :]  # [T, d/2]
    angles = torch.cat([angles, angles], dim=-1)  # [T, d]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., T, d] by the angles in cos/sin [T, d]; computed in float32, returned in x's dtype."""
    xf = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head causal softmax attention with RoPE. Input [B, T, C]; output [B, T, C] (+ KV cache).

    Parameters: qkv (fused, C -> 3C), proj (C -> C).

    Args:
        dim: C.
        num_heads: H; head dim d = C / H (even, for the rotation).
        qkv_bias: bias on the qkv projection (LLaMA: none; folding a norm adds one).
        proj_bias: bias on the output projection.
        rope_base: rotary base (10,000 as LLaMA).
    """

    state_names = ("k_cache", "v_cache")

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = False,
        proj_bias: bool = False,
        rope_base: float = 10_000.0,
    ) -> None:
        super().__init__()
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(f"dim {dim} must split into num_heads {num_heads} heads of even size")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.rope_base = rope_base
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
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
        """Empty KV cache: k_cache, v_cache [B, H, 0, d] in `dtype` (default float32)."""
        shape = (batch_size, self.num_heads, 0, self.head_dim)
        return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None, output_final_state: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """x [B, T, C], optional KV cache of L earlier tokens -> (y [B, T, C], cache of L + T or None)."""
        b, t, c = x.shape
        q, k, v = (
            self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )  # [B, H, T, d]
        past = 0 if state is None else state[0].shape[2]
        cos, sin = rotary_cos_sin(
            torch.arange(past, past + t, device=x.device), self.head_dim, self.rope_base
        )
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if state is not None:
            k = torch.cat([state[0].to(k.dtype), k], dim=2)  # [B, H, L + T, d]
            v = torch.cat([state[1].to(v.dtype), v], dim=2)
        if past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif t == 1:
            out = F.scaled_dot_product_attention(q, k, v)  # one new query sees every cached key
        else:
            # Query i (absolute position past + i) sees keys 0 .. past + i.
            allowed = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        y = self.proj(out.transpose(1, 2).reshape(b, t, c))
        return y, ((k, v) if output_final_state else None)

    def step(
        self, x: torch.Tensor, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """One token: x [B, C], KV cache -> (y [B, C], cache one position longer)."""
        y, state = self.forward(x.unsqueeze(1), state, output_final_state=True)
        return y.squeeze(1), state

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, rope_base={self.rope_base}"
