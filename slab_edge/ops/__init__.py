"""Stateless tensor functions: naive references, chunkwise and recurrent forms, optional fast kernels."""

from slab_edge.ops.backend import fla_available, resolve_mode
from slab_edge.ops.causal_sla import (
    causal_conv1d,
    causal_conv1d_fla,
    causal_conv1d_step,
    causal_linear_attn_chunk,
    causal_linear_attn_fla,
    causal_linear_attn_naive,
    causal_linear_attn_recurrent,
    causal_linear_attn_step,
    causal_sla,
    causal_sla_step,
)
from slab_edge.ops.gla import gla_chunk, gla_fla, gla_gate, gla_naive, gla_recurrent, gla_step

__all__ = [
    "causal_conv1d",
    "causal_conv1d_fla",
    "causal_conv1d_step",
    "causal_linear_attn_chunk",
    "causal_linear_attn_fla",
    "causal_linear_attn_naive",
    "causal_linear_attn_recurrent",
    "causal_linear_attn_step",
    "causal_sla",
    "causal_sla_step",
    "fla_available",
    "gla_chunk",
    "gla_fla",
    "gla_gate",
    "gla_naive",
    "gla_recurrent",
    "gla_step",
    "resolve_mode",
]
