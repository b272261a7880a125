"""Modules: SLA, causal SLA, GLA, RepBN, progressive norm, and the blocks that know how to reparameterize."""

from slab_edge.layers.causal_sla import CausalSimplifiedLinearAttention
from slab_edge.layers.gla import GatedLinearAttention
from slab_edge.layers.lm_blocks import SlabLMBlock, SwiGLU
from slab_edge.layers.norms import (
    ProgressiveNorm,
    RepBN,
    advance_progressive_norms,
    current_mix_weight,
    set_progressive_schedule,
)
from slab_edge.layers.reparam import reparameterize_model
from slab_edge.layers.sla import SimplifiedLinearAttention
from slab_edge.layers.softmax_attention import CausalSelfAttention

__all__ = [
    "ProgressiveNorm",
    "RepBN",
    "SimplifiedLinearAttention",
    "advance_progressive_norms",
    "current_mix_weight",
    "reparameterize_model",
    "set_progressive_schedule",
    # language models
    "CausalSelfAttention",
    "CausalSimplifiedLinearAttention",
    "GatedLinearAttention",
    "SlabLMBlock",
    "SwiGLU",
]
