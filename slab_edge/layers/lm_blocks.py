"""SLAB-LM building blocks: norm and token-mixer factories, the SwiGLU MLP and the pre-norm decoder block.

The block owns its two norms and the Linears that read them, so it implements `reparameterize()`:
an eval-affine norm (PRepBN) folds into the mixer's input projections (q/k/v, GLA's gate and output-gate
projections) and into SwiGLU's gate and up projections. RMSNorm divides by a data-dependent RMS and is
not affine, so it cannot fold; the model lists such norms in `unfoldable_norms`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slab_edge.layers.causal_sla import CausalSimplifiedLinearAttention
from slab_edge.layers.gla import GatedLinearAttention
from slab_edge.layers.norms import ProgressiveNorm, norm_affine
from slab_edge.layers.reparam import absorb_into_following, is_folded
from slab_edge.layers.softmax_attention import CausalSelfAttention

ATTENTION_TYPES = ("sla", "gla", "softmax")
LM_NORM_TYPES = ("rmsnorm", "prepbn")

State = tuple[torch.Tensor, ...]


def make_lm_norm(
    kind: str,
    dim: int,
    eps: float = 1e-6,
    prepbn_warmup_steps: int = 10_000,
    prepbn_decay_steps: int = 18_000,
) -> nn.Module:
    """RMSNorm, or the paper's LLaMA PRepBN: ProgressiveNorm(first='rmsnorm') with RepBN all-zero init.

    The official LLaMA-350M code builds every norm (before attention, before the MLP, and the final one) as
    LinearNorm(norm1=RMSNorm, norm2=RepBN): "norm1"/"norm2" there name the two branches of the progressive
    norm, not the block's two norms. RepBN's alpha, BN weight and BN bias start at 0, so the RepBN branch
    starts as the zero map and is learnt while the RMSNorm weight fades out; its BatchNorm uses the same eps
    as the RMSNorm (1e-6). warm = 10,000 and T = 18,000 are counted here in optimizer steps (the official
    counters move once per 16 forwards, i.e. once per optimizer step at 16 accumulation steps).
    """
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    if kind == "prepbn":
        return ProgressiveNorm(
            dim,
            decay_steps=prepbn_decay_steps,
            warmup_steps=prepbn_warmup_steps,
            first="rmsnorm",
            eps=eps,
            bn_eps=eps,
            repbn_init=(0.0, 0.0, 0.0),
        )
    raise ValueError(f"norm must be one of {', '.join(LM_NORM_TYPES)}, got {kind!r}")


def make_token_mixer(
    kind: str,
    dim: int,
    num_heads: int,
    *,
    conv_size: int = 4,
    gla_heads: int = 4,
    gla_expand_k: float = 0.5,
    gla_gate_low_rank_dim: int = 16,
    rope_base: float = 10_000.0,
    input_bias: bool = False,
    mode: str = "auto",
) -> nn.Module:
    """The attention of one block. `input_bias` gives the input projections biases (the folded graph)."""
    if kind == "sla":
        return CausalSimplifiedLinearAttention(
            dim, num_heads, conv_size=conv_size, qkv_bias=input_bias, mode=mode
        )
    if kind == "gla":
        return GatedLinearAttention(
            dim,
            num_heads=gla_heads,
            expand_k=gla_expand_k,
            gate_low_rank_dim=gla_gate_low_rank_dim,
            qkv_bias=input_bias,
            mode=mode,
        )
    if kind == "softmax":
        return CausalSelfAttention(dim, num_heads, qkv_bias=input_bias, rope_base=rope_base)
    raise ValueError(f"attention must be one of {', '.join(ATTENTION_TYPES)}, got {kind!r}")


class SwiGLU(nn.Module):
    """LLaMA's MLP: down(silu(gate(x)) * up(x)). [..., C] -> [..., C]."""

    def __init__(self, dim: int, hidden_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    @property
    def input_linear(self) -> list[nn.Linear]:
        return [self.gate_proj, self.up_proj]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SlabLMBlock(nn.Module):
    """Pre-norm decoder block: x + attn(norm1(x)), then + mlp(norm2(x)). [B, T, C] or, in step, [B, C].

    Args:
        dim, num_heads, ffn_dim: widths.
        attention: "sla" | "gla" | "softmax".
        norm: "rmsnorm" | "prepbn".
        deploy: build the folded graph directly (PRepBN norms as Identity, absorbing Linears with biases),
            so checkpoints written after `reparameterize()` load strictly. No effect on RMSNorm blocks.
        norm_eps, prepbn_warmup_steps, prepbn_decay_steps: see make_lm_norm.
        **mixer_kwargs: forwarded to make_token_mixer.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        attention: str = "gla",
        norm: str = "rmsnorm",
        deploy: bool = False,
        norm_eps: float = 1e-6,
        prepbn_warmup_steps: int = 10_000,
        prepbn_decay_steps: int = 18_000,
        **mixer_kwargs,
    ) -> None:
        super().__init__()
        folded = deploy and norm == "prepbn"

        def make_norm() -> nn.Module:
            return (
                nn.Identity()
                if folded
                else make_lm_norm(norm, dim, norm_eps, prepbn_warmup_steps, prepbn_decay_steps)
            )

        self.norm1 = make_norm()
        self.attn = make_token_mixer(attention, dim, num_heads, input_bias=folded, **mixer_kwargs)
        self.norm2 = make_norm()
        self.mlp = SwiGLU(dim, ffn_dim, bias=folded)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return self.attn.init_state(batch_size, device=device, dtype=dtype)

    def forward(
        self, x: torch.Tensor, state: State | None = None, output_final_state: bool = False
    ) -> tuple[torch.Tensor, State | None]:
        h, state = self.attn(self.norm1(x), state, output_final_state)
        x = x + h
        return x + self.mlp(self.norm2(x)), state

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, state = self.attn.step(self.norm1(x), state)
        x = x + h
        return x + self.mlp(self.norm2(x)), state

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold eval-affine norms into the Linears reading them (in place, idempotent). RMSNorm stays."""
        for name, readers in (("norm1", self.attn.input_linear), ("norm2", self.mlp.input_linear)):
            norm = getattr(self, name)
            if is_folded(norm) or norm_affine(norm) is None:
                continue
            for layer in readers:
                absorb_into_following(norm, layer)
            setattr(self, name, nn.Identity())
