"""Modules: SLA, causal SLA, GLA, RepBN, progressive norm, and the blocks that know how to reparameterize."""

from slab_edge.layers.norms import (
    ProgressiveNorm,
    RepBN,
    advance_progressive_norms,
    current_mix_weight,
    set_progressive_schedule,
)
from slab_edge.layers.reparam import reparameterize_model
from slab_edge.layers.sla import SimplifiedLinearAttention, sla_mix

__all__ = [
    "ProgressiveNorm",
    "RepBN",
    "SimplifiedLinearAttention",
    "advance_progressive_norms",
    "current_mix_weight",
    "reparameterize_model",
    "set_progressive_schedule",
    "sla_mix",
]
