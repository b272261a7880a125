"""Gated linear attention layer, as in the GLA paper (arXiv 2312.06635) and fla's GatedLinearAttention.

    q = x W_q, k = x W_k              [d -> d_k = d * expand_k (d/2)]
    v = x W_v                         [d -> d_v = d * expand_v (d)]
    log alpha = logsigmoid(x W1 W2 + b) / 16     W1: d x 16 (no bias), W2: 16 x d_k (+ b)
    o = GLA(q, k, v, log alpha)       per head, H = 4 by default, scale d_head_k^-1/2
    o' = RMSNorm(o) per head          (one RMSNorm over each head's d_v / H channels, weight shared by heads)
    r = Swish(x W_r + b_r)            [d -> d_v]
    y = (r * o') W_O                  [d_v -> d]
Parameters ~ 4 d^2. No feature map on q, k and no short convolution (the paper's layer has neither).

Recurrent state (a flat tuple, export-friendly): S [B, H, d_k / H, d_v / H] float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slab_edge.ops.backend import resolve_mode
from slab_edge.ops.gla import GATE_LOGIT_NORMALIZER, gla_chunk, gla_fla, gla_gate, gla_recurrent, gla_step

_GLA_FORMS = {"chunk": gla_chunk, "recurrent": gla_recurrent, "fla": gla_fla}


class GatedLinearAttention(nn.Module):
    """GLA token mixer. Input [B, T, C]; output [B, T, C] (+ state).

    Parameters (fla's names): q_proj, k_proj, v_proj, gk_proj (0: W1, 1: W2 + b), g_proj (output gate,
    with bias), g_norm (per-head RMSNorm), o_proj.

    Args:
        dim: d.
        num_heads: H (4 in the paper).
        expand_k: d_k = d * expand_k (0.5).
        expand_v: d_v = d * expand_v (1.0).
        gate_low_rank_dim: rank of the gate projection (16).
        gate_logit_normalizer: tau in log alpha = logsigmoid(.) / tau (16).
        norm_eps: eps of the per-head RMSNorm.
        scale: query scale; None for d_head_k^-1/2.
        qkv_bias: bias on q/k/v projections (none; folding a norm adds one).
        mode: "auto" (fla's chunk_gla on CUDA when installed, else chunk) | "chunk" | "recurrent" | "fla".
    """

    state_names = ("S",)

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = GATE_LOGIT_NORMALIZER,
        norm_eps: float = 1e-5,
        scale: float | None = None,
        qkv_bias: bool = False,
        mode: str = "auto",
    ) -> None:
        super().__init__()
        key_dim, value_dim = int(dim * expand_k), int(dim * expand_v)
        if key_dim != dim * expand_k or value_dim != dim * expand_v:
            raise ValueError(
                f"dim * expand_k and dim * expand_v must be integers, got {dim * expand_k}, {dim * expand_v}"
            )
        if key_dim % num_heads or value_dim % num_heads:
            raise ValueError(
                f"key dim {key_dim} and value dim {value_dim} must be divisible by num_heads {num_heads}"
            )
        self.dim, self.num_heads = dim, num_heads
        self.key_dim, self.value_dim = key_dim, value_dim
        self.head_k_dim, self.head_v_dim = key_dim // num_heads, value_dim // num_heads
        self.gate_logit_normalizer = gate_logit_normalizer
        self.scale = self.head_k_dim**-0.5 if scale is None else scale
        self.mode = mode
        self.q_proj = nn.Linear(dim, key_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, key_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, value_dim, bias=qkv_bias)
        self.gk_proj = nn.Sequential(
            nn.Linear(dim, gate_low_rank_dim, bias=qkv_bias), nn.Linear(gate_low_rank_dim, key_dim, bias=True)
        )
        self.g_proj = nn.Linear(dim, value_dim, bias=True)
        self.g_norm = nn.RMSNorm(self.head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(value_dim, dim, bias=False)

    @property
    def output_linear(self) -> nn.Linear:
        """The Linear that writes the mixer's output (into the residual stream)."""
        return self.o_proj

    @property
    def input_linear(self) -> list[nn.Linear]:
        """The Linear layers that read the mixer's input (the ones a preceding norm folds into)."""
        return [self.q_proj, self.k_proj, self.v_proj, self.gk_proj[0], self.g_proj]

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Zero state: S [B, H, d_k / H, d_v / H] float32 (dtype is ignored: the state is always fp32)."""
        return (torch.zeros(batch_size, self.num_heads, self.head_k_dim, self.head_v_dim, device=device),)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        lead = x.shape[:-1]
        q = self.q_proj(x).reshape(*lead, self.num_heads, self.head_k_dim)
        k = self.k_proj(x).reshape(*lead, self.num_heads, self.head_k_dim)
        v = self.v_proj(x).reshape(*lead, self.num_heads, self.head_v_dim)
        g = gla_gate(self.gk_proj(x), self.gate_logit_normalizer).reshape(
            *lead, self.num_heads, self.head_k_dim
        )
        return q, k, v, g  # [..., H, d_head]

    def _output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        o = self.g_norm(o.to(x.dtype)).reshape(*x.shape[:-1], self.value_dim)  # per-head norm, heads merged
        return self.o_proj(F.silu(self.g_proj(x)) * o)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None, output_final_state: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """x [B, T, C], optional state from earlier tokens -> (y [B, T, C], state after x or None)."""
        q, k, v, g = self._project(x)  # [B, T, H, *]
        mode = resolve_mode(self.mode, x)
        # export graphs (torch.export / torch.onnx dynamo) need the chunk states without a Python loop over
        # a data-dependent number of chunks: the loop-free form keeps the prompt length dynamic
        extra = {"parallel_states": True} if mode == "chunk" and torch.compiler.is_exporting() else {}
        o, s = _GLA_FORMS[mode](
            q, k, v, g, self.scale, None if state is None else state[0], output_final_state, **extra
        )
        return self._output(x, o), ((s,) if output_final_state else None)

    def step(
        self, x: torch.Tensor, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """One token: x [B, C], state -> (y [B, C], new state)."""
        q, k, v, g = self._project(x)  # [B, H, *]
        o, s = gla_step(q, k, v, g, state[0], self.scale)
        return self._output(x, o), (s,)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, key_dim={self.key_dim}, value_dim={self.value_dim}, mode={self.mode}"
