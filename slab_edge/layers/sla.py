"""Simplified linear attention (SLA) for vision: ReLU-kernel linear attention + a shared depthwise conv on V.

No `from __future__ import annotations` here: TorchScript cannot resolve string annotations of
@torch.jit.unused methods.

Layer maths (REFERENCE §1): q, k, v = projections of x; k += P (learnable positional encoding, zero init);
Q, K = ReLU(q), ReLU(k); per head O = Q (K^T V) / (Q . sum K + eps) in float32; O += DWC(V) with ONE 5x5
depthwise conv over the head dimension shared by all heads; merge heads; output projection.
"""

from typing import Optional, Tuple  # noqa: UP035  (TorchScript resolves typing names)

import torch
import torch.nn.functional as F
from torch import nn

from slab_edge.ops.sla import SLA_EPS, sla_core_channels_first
from slab_edge.ops.sla_fused import linear_attention, use_fused

# torch.fx records the core as one call: it picks the product order from the token count and switches
# autocast off, neither of which a symbolic trace can follow.
torch.fx.wrap("sla_core_channels_first")


def resample_positional_encoding(
    pe: torch.Tensor, old_hw: tuple[int, int], new_hw: tuple[int, int]
) -> torch.Tensor:
    """Bicubic resize of a [1, H*W, C] positional encoding to a new grid (timm's convention)."""
    if tuple(old_hw) == tuple(new_hw):
        return pe
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(pe, new_size=list(new_hw), old_size=list(old_hw), num_prefix_tokens=0)


class SimplifiedLinearAttention(nn.Module):
    """SLA over a token grid. Input [B, N, C] with N = H * W; output [B, N, C].

    Parameters (official names): qkv (fused) or q + kv (PVT), proj, dwc, positional_encoding [1, N, C].

    Args:
        dim: C.
        num_heads: h.
        grid_size: (H, W) the positional encoding is built for.
        qkv_bias: bias on the input projections.
        kernel_size: DWC kernel (5 in every official model).
        split_qkv: separate q and kv projections (PVT naming) instead of one qkv.
        dynamic_size: accept other grids by bicubic resampling of the positional encoding; otherwise a
            grid other than grid_size raises ValueError.
        device, dtype: where and in which dtype the parameters are created (timm's factory kwargs).
    """

    __jit_unused_properties__ = ["input_linear"]

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: tuple[int, int],
        qkv_bias: bool = True,
        kernel_size: int = 5,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        split_qkv: bool = False,
        dynamic_size: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = dim // num_heads
        self.grid_size: tuple[int, int] = (int(grid_size[0]), int(grid_size[1]))
        self.dynamic_size = dynamic_size
        self.split_qkv = split_qkv
        # The unused projection slots hold parameter-free Identities so TorchScript can compile both branches
        # while the state dict keeps the official names only.
        if split_qkv:
            self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
            self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias, **dd)
            self.qkv = nn.Identity()
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
            self.q = nn.Identity()
            self.kv = nn.Identity()
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dwc = nn.Conv2d(
            self.head_dim, self.head_dim, kernel_size, padding=kernel_size // 2, groups=self.head_dim, **dd
        )
        self.positional_encoding = nn.Parameter(
            torch.zeros(1, self.grid_size[0] * self.grid_size[1], dim, **dd)
        )

    @property
    def input_linear(self) -> list[nn.Linear]:
        """The Linear layers that read the attention input (the ones a preceding norm folds into)."""
        return [self.q, self.kv] if self.split_qkv else [self.qkv]

    def positional_encoding_for(self, hw: Tuple[int, int]) -> torch.Tensor:  # noqa: UP006 (TorchScript)
        if hw[0] == self.grid_size[0] and hw[1] == self.grid_size[1]:
            return self.positional_encoding
        if not self.dynamic_size:
            raise ValueError(
                "SLA positional encoding is fixed to a "
                + f"{self.grid_size[0]}x{self.grid_size[1]} token grid, got {hw[0]}x{hw[1]}; build the model "
                + "for this image size (img_size=...) or pass dynamic_img_size=True to resample it"
            )
        return self._resampled_encoding(hw[0], hw[1])

    @torch.jit.unused
    def _resampled_encoding(self, h: int, w: int) -> torch.Tensor:
        return resample_positional_encoding(self.positional_encoding, self.grid_size, (h, w))

    def forward(self, x: torch.Tensor, hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:  # noqa: UP006,UP045
        if hw is None:
            hw = self.grid_size
        if self.split_qkv:
            q = self.q(x)
            k, v = self.kv(x).chunk(2, dim=-1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        k = k + self.positional_encoding_for(hw)
        return self.proj_drop(self.proj(self.mix(q, k, v, hw)))

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:  # noqa: UP006
        """Multi-head SLA token mixing before the output projection.

        Args:
            q, k, v: [B, N, C] projected queries, keys (positional encoding already added) and values.
            hw: (H, W) with H * W = N, the token grid the DWC runs on.

        Returns:
            [B, N, C] in v's dtype: per head Q (K^T V) / (Q . sum K + eps) + DWC(V), heads merged.
        """
        if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript only drops a bare is_scripting branch)
            if use_fused(q, k, v, self.head_dim):
                return self._mix_fused(q, k, v, hw)
        b, n, c = q.shape
        heads, d = self.num_heads, self.head_dim
        # channels first for q and v: v_t feeds both the core and the DWC, and the output leaves in one
        # transpose (4 Transposes per block in the exported graph instead of 8)
        q_t = F.relu(q).reshape(b, n, heads, d).permute(0, 2, 3, 1)  # [B, h, d, N]
        k = F.relu(k).reshape(b, n, heads, d).transpose(1, 2)  # [B, h, N, d]
        v_t = v.reshape(b, n, heads, d).permute(0, 2, 3, 1)  # [B, h, d, N]
        out_t = sla_core_channels_first(q_t, k, v_t)  # [B, h, d, N] float32
        fmap = self.dwc(v_t.reshape(b * heads, d, hw[0], hw[1])).reshape(b, heads, d, n)
        return (out_t + fmap).permute(0, 3, 1, 2).reshape(b, n, c).to(v.dtype)  # [B, N, C]

    @torch.jit.unused
    def _mix_fused(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        hw: Tuple[int, int],  # noqa: UP006
    ) -> torch.Tensor:
        """`mix` through the fused operator: q, k, v stay tokens first ([B, N, h, d] views of [B, N, C]), and
        nothing is transposed: the DWC shared by the heads runs as one depthwise conv over all C channels (its
        filter repeated per head, `dwc_all_heads`) on V read channels-last ([B, N, C] is [B, H, W, C]).
        k comes in q's dtype (under autocast the fp32 positional encoding promotes it; the operator has one
        I/O dtype)."""
        b, n, c = q.shape
        heads, d = self.num_heads, self.head_dim
        out = linear_attention(
            F.relu(q).reshape(b, n, heads, d),
            F.relu(k.to(q.dtype)).reshape(b, n, heads, d),
            v.reshape(b, n, heads, d),
            SLA_EPS,
        )
        v_map = v.reshape(b, hw[0], hw[1], c).permute(0, 3, 1, 2)  # [B, C, H, W], channels-last strides
        weight, bias = dwc_all_heads(self.dwc.weight, self.dwc.bias, heads)
        fmap = F.conv2d(v_map, weight.to(v.dtype), bias.to(v.dtype), padding=self.dwc.padding, groups=c)
        return out.reshape(b, n, c) + fmap.permute(0, 2, 3, 1).reshape(b, n, c)  # [B, N, C]


def dwc_all_heads(weight: torch.Tensor, bias: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-head DWC (weight [d, 1, k, k], bias [d], shared by the heads) as one depthwise conv over
    C = heads * d channels: channel h * d + e gets filter e. Returns (weight [C, 1, k, k], bias [C])."""
    return weight.repeat(heads, 1, 1, 1), bias.repeat(heads)
