"""Static-state decoding for SlabLM: preallocated state, a capture-safe step, CUDA graphs and torch.compile.

A batch-1 decode step is a chain of a few hundred small kernels. Eager PyTorch spends far longer launching
them (and, under autocast, casting every weight to bf16 again on every step) than the GPU spends reading the
weights. StaticDecoder builds, once per model, batch size and dtype:
  * the weights in the compute dtype (a bf16 copy under bf16 autocast, the parameters themselves otherwise),
    with the Linears that read the same input concatenated into one: GLA's q / k / v / gate / output-gate
    projections and SwiGLU's gate and up (built here, so checkpoints do not change);
  * the state as preallocated buffers updated in place: linear attention's constant-size S / z / conv state,
    and for softmax layers a KV cache of `max_len` positions read through a mask up to a device-side
    position index, so that every shape is static;
  * a step without host syncs, without allocations that outlive it and without Python branches on tensor
    values: the token comes in through a static input tensor, the step advances the position itself.

The step then runs in one of MODES:
    static            the capture-safe step as plain PyTorch ops (any device)
    graph             captured once in a torch.cuda.CUDAGraph, replayed per token (CUDA)
    compile           each block compiled with torch.compile (inductor fuses the elementwise ops); one
                      compilation per mixer kind, shared by every block of that kind (any device)
    compile+graph     the compiled blocks, then captured in one CUDA graph (CUDA)
    reduce-overhead   the whole step compiled with mode="reduce-overhead" (inductor's own CUDA graphs; CUDA)
SlabLM.generate() uses "graph" on CUDA (batch <= MAX_GRAPH_BATCH) and "compile+graph" with compile_step=True;
bench/lm_decode_torch.py times every mode against eager SlabLM.step.

Numerics follow eager decoding under autocast: GEMM inputs and weights in the compute dtype, the residual
stream, norms and recurrent states in the dtypes eager keeps them in (float32 states; a float32 residual
stream under autocast). The results equal eager ones up to GEMM accumulation order (the fused projections),
in-place update rounding (fused multiply-adds) and kernel choice (the masked attention over the static KV
cache): tests/models/test_lm_decode_graph.py (CPU) and tests/gpu/test_lm_decode_graph_gpu.py (CUDA) state the
tolerances.

    decoder = StaticDecoder(model.eval(), batch_size=1, max_len=2048, dtype=torch.bfloat16, mode="graph")
    logits, state = model.prefill(ids)          # the chunk form (fla kernels on CUDA)
    decoder.start(state, ids.shape[1])          # copy the prefill state into the buffers
    next_logits = decoder.step(token)           # [B] -> [B, V]: a static buffer, valid until the next step
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from slab_edge.errors import InputError
from slab_edge.layers.causal_sla import CausalSimplifiedLinearAttention
from slab_edge.layers.gla import GatedLinearAttention
from slab_edge.layers.norms import norm_affine
from slab_edge.layers.softmax_attention import CausalSelfAttention, apply_rotary, rotary_cos_sin
from slab_edge.ops.gla import gla_gate

__all__ = [
    "MAX_GRAPH_BATCH",
    "MODES",
    "StaticDecoder",
    "cached_decoder",
    "decoder_for_generate",
    "supports_static_decoding",
]

MODES = ("static", "graph", "compile", "compile+graph", "reduce-overhead")
CUDA_MODES = ("graph", "compile+graph", "reduce-overhead")
#: generate() captures a graph by default up to this batch size (decoding larger batches is less launch-bound)
MAX_GRAPH_BATCH = 8
#: static KV caches are sized in multiples of this, so that generations of similar length share one capture
KV_LENGTH_BUCKET = 256
#: static KV cache lengths are rounded up to a multiple of this (the memory-efficient attention kernel's mask
#: alignment; an unaligned mask costs a padding copy per layer and step)
KV_ALIGN = 16
#: runs before a capture: compilation, cuBLAS handles and the allocator's first blocks happen outside it
WARMUP_STEPS = 3

State = tuple[torch.Tensor, ...]


# ---------------------------------------------------------------------------------------------------------
# Weights and state of one block, as tuples of tensors (what torch.compile guards on: shapes and dtypes, so
# every block of a kind shares one compilation).


class NormWeights(NamedTuple):
    """A norm in eval mode: kind "rms" (weight, eps), "affine" (an eval-affine PRepBN: x * weight + bias)
    or "none" (folded away)."""

    kind: str
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float | None


class BlockWeights(NamedTuple):
    """What every block has: its two norms and SwiGLU (gate and up concatenated: [2F, C])."""

    norm1: NormWeights
    norm2: NormWeights
    gate_up_w: torch.Tensor
    gate_up_b: torch.Tensor | None
    down_w: torch.Tensor
    down_b: torch.Tensor | None


class SLAWeights(NamedTuple):
    qkv_w: torch.Tensor  # [3C, C]
    qkv_b: torch.Tensor | None
    conv_w: torch.Tensor  # [C, W]
    conv_b: torch.Tensor | None  # [C]
    proj_w: torch.Tensor  # [C, C]
    proj_b: torch.Tensor | None
    heads: int
    eps: float


class SLAState(NamedTuple):
    S: torch.Tensor  # [B, H, d, d] float32
    z: torch.Tensor  # [B, H, d] float32
    conv: torch.Tensor  # [B, C, W-1] compute dtype


class GLAWeights(NamedTuple):
    in_w: torch.Tensor  # [2 d_k + 2 d_v + r, C]: q, k, v, gate low rank, output gate
    in_b: torch.Tensor | None
    gk_w: torch.Tensor  # [d_k, r]
    gk_b: torch.Tensor | None
    norm_w: torch.Tensor  # [d_v / H] per-head output RMSNorm
    o_w: torch.Tensor  # [C, d_v]
    o_b: torch.Tensor | None
    heads: int
    head_k: int
    head_v: int
    low_rank: int
    scale: float
    gate_normalizer: float
    norm_eps: float | None


class GLAState(NamedTuple):
    S: torch.Tensor  # [B, H, d_k / H, d_v / H] float32


class SoftmaxWeights(NamedTuple):
    qkv_w: torch.Tensor  # [3C, C]
    qkv_b: torch.Tensor | None
    proj_w: torch.Tensor
    proj_b: torch.Tensor | None
    heads: int
    rope_base: float


class KVCache(NamedTuple):
    k: torch.Tensor  # [B, H, L_max, d] compute dtype, rotated keys
    v: torch.Tensor  # [B, H, L_max, d]
    slots: torch.Tensor  # [L_max] long: 0 .. L_max - 1, compared with the position for the mask
    cos: torch.Tensor  # [L_max, d] float32 rotary table (read-only), one row per position
    sin: torch.Tensor


# ---------------------------------------------------------------------------------------------------------
# The capture-safe step: pure functions of tensors (and constants), updating the state buffers in place.


def _norm(x: torch.Tensor, norm: NormWeights) -> torch.Tensor:
    if norm.kind == "rms":
        return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.eps)
    if norm.kind == "affine":
        return x * norm.weight + norm.bias
    return x


def _mlp_residual(x: torch.Tensor, block: BlockWeights, dtype: torch.dtype) -> torch.Tensor:
    """x + SwiGLU(norm2(x)) for x [B, C] (the residual stream)."""
    gate, up = F.linear(_norm(x, block.norm2).to(dtype), block.gate_up_w, block.gate_up_b).chunk(2, dim=-1)
    return x + F.linear(F.silu(gate) * up, block.down_w, block.down_b)


def sla_block_step(
    x: torch.Tensor,
    position: torch.Tensor,
    block: BlockWeights,
    w: SLAWeights,
    s: SLAState,
    dtype: torch.dtype,
) -> torch.Tensor:
    """One token through a causal-SLA block: x [B, C] -> [B, C]; S, z, conv updated in place.

    S += k^T v, z += k, o = q S / (q . z + eps) on ReLU features in float32, plus the causal depthwise
    conv over the last W values (the conv state shifts by one).
    """
    b, c = x.shape
    heads = w.heads
    h = _norm(x, block.norm1)
    proj = F.linear(h.to(dtype), w.qkv_w, w.qkv_b)  # [B, 3C]
    v = proj[:, 2 * c :]  # [B, C], heads side by side
    qkv_f = proj.view(b, 3, heads, c // heads).to(s.S.dtype)  # one cast (ReLU commutes with it exactly)
    qf, kf = F.relu(qkv_f[:, :2]).unbind(1)  # [B, H, d]
    s.S.addcmul_(kf.unsqueeze(-1), qkv_f[:, 2].unsqueeze(-2))
    s.z.add_(kf)
    num = (qf.unsqueeze(-2) @ s.S).squeeze(-2)  # [B, H, d]
    o = (num / ((qf * s.z).sum(-1, keepdim=True) + w.eps)).to(v.dtype)
    window = torch.cat([s.conv, v.unsqueeze(-1)], dim=-1)  # [B, C, W]
    local = (window * w.conv_w).sum(-1)
    if w.conv_b is not None:
        local = local + w.conv_b
    s.conv.copy_(window[..., 1:])
    y = F.linear((o + local.view(b, heads, -1)).reshape(b, c), w.proj_w, w.proj_b)
    return _mlp_residual(x + y, block, dtype)


def gla_block_step(
    x: torch.Tensor,
    position: torch.Tensor,
    block: BlockWeights,
    w: GLAWeights,
    s: GLAState,
    dtype: torch.dtype,
) -> torch.Tensor:
    """One token through a GLA block: x [B, C] -> [B, C]; S = Diag(exp(g)) S + k^T v in place (float32)."""
    b = x.shape[0]
    heads, hk, hv = w.heads, w.head_k, w.head_v
    h = _norm(x, block.norm1)
    qkv, low_rank, gate = F.linear(h.to(dtype), w.in_w, w.in_b).split(
        [heads * (2 * hk + hv), w.low_rank, heads * hv], dim=-1
    )
    g = gla_gate(F.linear(low_rank, w.gk_w, w.gk_b), w.gate_normalizer).view(b, heads, hk)
    state = s.S
    q, k, v = qkv.to(state.dtype).split([heads * hk, heads * hk, heads * hv], dim=-1)  # one cast
    state.mul_(g.to(state.dtype).exp().unsqueeze(-1))
    state.addcmul_(k.view(b, heads, hk, 1), v.view(b, heads, 1, hv))
    o = (q.view(b, heads, 1, hk) @ state).squeeze(-2) * w.scale  # [B, H, d_v / H]
    # rounded to the compute dtype first, as eager's output is, then normalised in the residual's dtype
    o = F.rms_norm(o.to(dtype).to(h.dtype), (hv,), w.norm_w, w.norm_eps).reshape(b, heads * hv)
    y = F.linear((F.silu(gate) * o).to(dtype), w.o_w, w.o_b)
    return _mlp_residual(x + y, block, dtype)


def softmax_block_step(
    x: torch.Tensor,
    position: torch.Tensor,
    block: BlockWeights,
    w: SoftmaxWeights,
    s: KVCache,
    dtype: torch.dtype,
) -> torch.Tensor:
    """One token through a softmax block at `position` [1]: x [B, C] -> [B, C].

    The rotated key and the value go into the static cache at `position`; attention reads every slot <= it.
    """
    b, c = x.shape
    heads = w.heads
    h = _norm(x, block.norm1)
    qkv = F.linear(h.to(dtype), w.qkv_w, w.qkv_b).view(b, 1, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    cos, sin = s.cos.index_select(0, position), s.sin.index_select(0, position)  # [1, d]
    q, k = apply_rotary(qkv[:2], cos, sin).unbind(0)  # [B, H, 1, d], q and k rotated together
    v = qkv[2]
    s.k.index_copy_(2, position, k)
    s.v.index_copy_(2, position, v)
    seen = (s.slots <= position).view(1, 1, 1, -1)  # [1, 1, 1, L_max]
    out = F.scaled_dot_product_attention(q, s.k, s.v, attn_mask=seen)  # [B, H, 1, d]
    y = F.linear(out.transpose(1, 2).reshape(b, c), w.proj_w, w.proj_b)
    return _mlp_residual(x + y, block, dtype)


def head_step(
    x: torch.Tensor, norm: NormWeights, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """Final norm and LM head: x [B, C] -> logits [B, V] in the compute dtype."""
    return F.linear(_norm(x, norm).to(dtype), weight, bias)


# ---------------------------------------------------------------------------------------------------------
# Per mixer type: its weights, its buffers, how the model's state goes in and comes out.


def _weight(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.detach().to(dtype)  # no copy when the dtype already matches


def _fused_linear(
    layers: Sequence[nn.Linear], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One (weight [sum out, in], bias or None) for Linears reading the same input; missing biases are 0."""
    weight = torch.cat([layer.weight.detach() for layer in layers]).to(dtype)
    if all(layer.bias is None for layer in layers):
        return weight, None
    bias = torch.cat(
        [
            layer.bias.detach() if layer.bias is not None else layer.weight.new_zeros(layer.out_features)
            for layer in layers
        ]
    )
    return weight, bias.to(dtype)


def _norm_weights(norm: nn.Module) -> NormWeights:
    if isinstance(norm, nn.Identity):
        return NormWeights("none", None, None, None)
    if isinstance(norm, nn.RMSNorm):
        weight = None if norm.weight is None else norm.weight.detach()
        return NormWeights("rms", weight, None, norm.eps)
    affine = norm_affine(norm)  # PRepBN (RepBN in eval), unfolded
    if affine is None:
        raise InputError(f"no static decoding form for the norm {type(norm).__name__}")
    dtype = next(norm.parameters()).dtype
    return NormWeights("affine", affine[0].to(dtype), affine[1].to(dtype), None)


@dataclass(frozen=True)
class _MixerKind:
    """How one token-mixer type decodes statically (see _MIXER_KINDS)."""

    name: str
    block_step: Callable[..., torch.Tensor]
    weights: Callable[[nn.Module, torch.dtype], NamedTuple]
    buffers: Callable[[nn.Module, int, int, torch.dtype, torch.device], NamedTuple]
    has_kv_cache: bool = False


def _sla_weights(attn: CausalSimplifiedLinearAttention, dtype: torch.dtype) -> SLAWeights:
    return SLAWeights(
        _weight(attn.qkv.weight, dtype),
        _weight(attn.qkv.bias, dtype),
        _weight(attn.dwc.weight.reshape(attn.dim, -1), dtype),
        _weight(attn.dwc.bias, dtype),
        _weight(attn.proj.weight, dtype),
        _weight(attn.proj.bias, dtype),
        attn.num_heads,
        attn.eps,
    )


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # float32 states, as eager keeps them


def _sla_buffers(attn, batch: int, max_len: int, dtype: torch.dtype, device) -> SLAState:
    h, d = attn.num_heads, attn.head_dim
    state = _state_dtype(dtype)
    return SLAState(
        torch.zeros(batch, h, d, d, device=device, dtype=state),
        torch.zeros(batch, h, d, device=device, dtype=state),
        torch.zeros(batch, attn.dim, attn.conv_size - 1, device=device, dtype=dtype),
    )


def _gla_weights(attn: GatedLinearAttention, dtype: torch.dtype) -> GLAWeights:
    low_rank, gk = attn.gk_proj
    in_w, in_b = _fused_linear([attn.q_proj, attn.k_proj, attn.v_proj, low_rank, attn.g_proj], dtype)
    return GLAWeights(
        in_w,
        in_b,
        _weight(gk.weight, dtype),
        _weight(gk.bias, dtype),
        attn.g_norm.weight.detach(),
        _weight(attn.o_proj.weight, dtype),
        _weight(attn.o_proj.bias, dtype),
        attn.num_heads,
        attn.head_k_dim,
        attn.head_v_dim,
        low_rank.out_features,
        attn.scale,
        attn.gate_logit_normalizer,
        attn.g_norm.eps,
    )


def _gla_buffers(attn, batch: int, max_len: int, dtype: torch.dtype, device) -> GLAState:
    shape = (batch, attn.num_heads, attn.head_k_dim, attn.head_v_dim)
    return GLAState(torch.zeros(shape, device=device, dtype=_state_dtype(dtype)))


def _softmax_weights(attn: CausalSelfAttention, dtype: torch.dtype) -> SoftmaxWeights:
    return SoftmaxWeights(
        _weight(attn.qkv.weight, dtype),
        _weight(attn.qkv.bias, dtype),
        _weight(attn.proj.weight, dtype),
        _weight(attn.proj.bias, dtype),
        attn.num_heads,
        attn.rope_base,
    )


def _softmax_buffers(attn, batch: int, max_len: int, dtype: torch.dtype, device) -> KVCache:
    shape = (batch, attn.num_heads, max_len, attn.head_dim)
    slots = torch.arange(max_len, device=device)
    cos, sin = rotary_cos_sin(slots, attn.head_dim, attn.rope_base)  # what eager computes per position
    return KVCache(
        torch.zeros(shape, device=device, dtype=dtype),
        torch.zeros(shape, device=device, dtype=dtype),
        slots,
        cos,
        sin,
    )


#: Dispatch per layer on the mixer's type: models may mix them (hybrid linear + softmax stacks).
_MIXER_KINDS: dict[type, _MixerKind] = {
    CausalSimplifiedLinearAttention: _MixerKind("sla", sla_block_step, _sla_weights, _sla_buffers),
    GatedLinearAttention: _MixerKind("gla", gla_block_step, _gla_weights, _gla_buffers),
    CausalSelfAttention: _MixerKind(
        "softmax", softmax_block_step, _softmax_weights, _softmax_buffers, has_kv_cache=True
    ),
}


def supports_static_decoding(model: nn.Module) -> bool:
    """True when every block's token mixer has a static decoding step."""
    return all(type(block.attn) in _MIXER_KINDS for block in model.layers)


def _mixer_kind(attn: nn.Module) -> _MixerKind:
    kind = _MIXER_KINDS.get(type(attn))
    if kind is None:
        known = ", ".join(t.__name__ for t in _MIXER_KINDS)
        raise InputError(
            f"no static decoding step for the token mixer {type(attn).__name__} (known: {known})"
        )
    return kind


@dataclass
class _Layer:
    kind: _MixerKind
    block: BlockWeights
    weights: NamedTuple
    state: NamedTuple
    state_names: tuple[str, ...]


def _tensors(value) -> Iterator[torch.Tensor]:
    """Every tensor inside nested tuples."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, tuple):
        for item in value:
            yield from _tensors(item)


_COMPILED: dict[tuple[Callable, str], Callable] = {}


def _compiled(fn: Callable, backend: str) -> Callable:
    """torch.compile(fn), one wrapper per function (its compilations are shared by every block of a kind).

    fullgraph: a graph break (a host sync, a branch on a tensor value) is an error, not a silent fallback.
    """
    if (fn, backend) not in _COMPILED:
        _COMPILED[fn, backend] = torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)
    return _COMPILED[fn, backend]


# ---------------------------------------------------------------------------------------------------------


class StaticDecoder:
    """Static-state decode step of a SlabLM (see the module docstring).

    Args:
        model: the SlabLM, in eval mode (the decoder uses eval-mode norms). The decoder copies what it needs
            (weights in `dtype`, fused projections) and keeps no reference to the module; rebuild it after
            changing the weights (cached_decoder does that by itself).
        batch_size: B, fixed.
        max_len: positions of the static KV cache of softmax layers (prompt + generated tokens), rounded up to
            a multiple of KV_ALIGN; default the model's context_length. Ignored by models without softmax
            layers (their state is constant-size).
        dtype: compute dtype of the GEMMs (bf16 for bf16 autocast); default the model's parameter dtype.
        mode: one of MODES.
        compile_backend: torch.compile backend of the compile modes ("inductor"; "aot_eager" traces the
            same graph without generating code, for quick capture-safety checks).
    """

    def __init__(
        self,
        model: nn.Module,
        batch_size: int = 1,
        max_len: int | None = None,
        dtype: torch.dtype | None = None,
        mode: str = "graph",
        *,
        compile_backend: str = "inductor",
    ) -> None:
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if model.training:
            raise InputError("StaticDecoder decodes with eval-mode norms: call model.eval() first")
        device = model.embed.weight.device
        if mode in CUDA_MODES and device.type != "cuda":
            raise InputError(f"decode mode {mode!r} needs the model on a CUDA device, it is on {device.type}")
        self.mode, self.batch_size, self.device = mode, batch_size, device
        self.dtype = dtype or model.head.weight.dtype
        kinds = [_mixer_kind(block.attn) for block in model.layers]
        has_kv = any(kind.has_kv_cache for kind in kinds)
        if has_kv and max_len is None:
            max_len = model.config.context_length
        if has_kv and max_len < 1:
            raise InputError(f"max_len must be >= 1, got {max_len}")
        self.max_len = -(-max_len // KV_ALIGN) * KV_ALIGN if has_kv else None
        with torch.no_grad():
            self.layers = [self._layer(block, kind) for block, kind in zip(model.layers, kinds)]
            self.embed_weight = model.embed.weight.detach()
            self.final_norm = _norm_weights(model.norm)
            self.head_w = _weight(model.head.weight, self.dtype)
            self.head_b = _weight(model.head.bias, self.dtype)
            self.token = torch.zeros(batch_size, dtype=torch.long, device=device)
            self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.length = 0  # tokens seen (host-side: no sync to read it)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # the graph's static output
        if mode in ("compile", "compile+graph"):
            self._block_step = {kind.name: _compiled(kind.block_step, compile_backend) for kind in kinds}
            self._head_step = _compiled(head_step, compile_backend)
        else:
            self._block_step = {kind.name: kind.block_step for kind in kinds}
            self._head_step = head_step
        self._run = self._forward
        if mode == "reduce-overhead":
            tables = [t for layer in self.layers for t in _tensors(layer.state)]
            for t in [self.token, self.position, *tables, *self._weights()]:
                torch._dynamo.mark_static_address(t, guard=False)
            self._run = torch.compile(
                self._forward, mode="reduce-overhead", fullgraph=True, dynamic=False, backend=compile_backend
            )
        with torch.no_grad(), self._no_autocast():
            if mode in ("graph", "compile+graph"):
                self._capture()
            elif mode != "static":  # compile now, not inside the first timed step
                self._warm_up()
        self.start(None)

    def _layer(self, block: nn.Module, kind: _MixerKind) -> _Layer:
        mlp = block.mlp
        gate_up_w, gate_up_b = _fused_linear([mlp.gate_proj, mlp.up_proj], self.dtype)
        weights = BlockWeights(
            _norm_weights(block.norm1),
            _norm_weights(block.norm2),
            gate_up_w,
            gate_up_b,
            _weight(mlp.down_proj.weight, self.dtype),
            _weight(mlp.down_proj.bias, self.dtype),
        )
        state = kind.buffers(block.attn, self.batch_size, self.max_len or 0, self.dtype, self.device)
        names = tuple(block.attn.state_names)
        return _Layer(kind, weights, kind.weights(block.attn, self.dtype), state, names)

    def _no_autocast(self):
        return torch.autocast(device_type=self.device.type, enabled=False)  # the step casts explicitly

    # ------------------------------------------------------------------ the step

    def _forward(self, token: torch.Tensor) -> torch.Tensor:
        """token [B] -> logits [B, V]; advances every state buffer and the position by one token."""
        x = F.embedding(token, self.embed_weight)  # [B, C]
        for layer in self.layers:
            x = self._block_step[layer.kind.name](
                x, self.position, layer.block, layer.weights, layer.state, self.dtype
            )
        logits = self._head_step(x, self.final_norm, self.head_w, self.head_b, self.dtype)
        self.position.add_(1)
        return logits

    def _warm_up(self) -> None:
        for _ in range(WARMUP_STEPS):
            self.position.zero_()  # stay inside a short KV cache
            if self.mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            self._run(self.token)

    def _capture(self) -> None:
        """Warm up on a side stream (as torch.cuda.graph requires), then capture one step."""
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            self._warm_up()
        current.wait_stream(side)
        self.position.zero_()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._forward(self.token)

    @torch.no_grad()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Decode one token per sequence: token [B] (ids, on the model's device) -> logits [B, V].

        In the graph modes the logits are the graph's static output buffer, overwritten by the next step:
        use (or clone) them before calling step again. Token ids are not range-checked (that would sync).
        """
        if token.shape != (self.batch_size,) or token.dtype not in (torch.long, torch.int32):
            raise InputError(
                f"token must be integer ids of shape ({self.batch_size},), "
                f"got {token.dtype} {tuple(token.shape)}"
            )
        if self.max_len is not None and self.length >= self.max_len:
            raise InputError(
                f"the static KV cache holds {self.max_len} tokens and is full: "
                "build the decoder with a larger max_len"
            )
        with self._no_autocast():
            if self.graph is not None:
                self.token.copy_(token)
                self.graph.replay()
                logits = self.logits
            else:
                if self.mode == "reduce-overhead":
                    torch.compiler.cudagraph_mark_step_begin()
                logits = self._run(token.long())
        self.length += 1
        return logits

    # ------------------------------------------------------------------ state in and out

    @torch.no_grad()
    def start(self, state: Sequence[torch.Tensor] | None, length: int = 0) -> None:
        """Load a flat model state (SlabLM's layout, e.g. from prefill) after `length` tokens; None: empty.

        Softmax layers' KV caches must hold `length` positions; every other tensor must have the shape of its
        buffer. The buffers are written in place (the captured graph reads them).
        """
        if state is None:
            for t in self._buffers()[2:]:
                t.zero_()
            length = 0
        else:
            self._load(state, length)
        self.position.fill_(length)
        self.length = length

    def _load(self, state: Sequence[torch.Tensor], length: int) -> None:
        expected = sum(len(layer.state_names) for layer in self.layers)
        if len(state) != expected:
            raise InputError(f"state has {len(state)} tensors, this model needs {expected}")
        if length < 0 or (self.max_len is not None and length >= self.max_len):
            raise InputError(
                f"length must be in [0, {self.max_len}) (the static KV cache), got {length}"
                if self.max_len is not None
                else f"length must be >= 0, got {length}"
            )
        items = iter(state)
        pairs = []  # (buffer, target view, source): all checked first, so bad input writes nothing
        for i, layer in enumerate(self.layers):
            for name, buffer in zip(layer.state_names, layer.state):
                source = next(items)
                target = buffer[:, :, :length] if layer.kind.has_kv_cache else buffer
                if tuple(source.shape) != tuple(target.shape) or not source.is_floating_point():
                    raise InputError(
                        f"state tensor layers.{i}.{name} has shape {tuple(source.shape)} and dtype "
                        f"{source.dtype}; expected {tuple(target.shape)} floating point"
                    )
                pairs.append((buffer, target, source))
        for buffer, target, source in pairs:
            if target is not buffer:
                buffer[:, :, length:].zero_()  # no stale (or non-finite) values behind the mask
            target.copy_(source)

    @torch.no_grad()
    def state(self) -> State:
        """A copy of the current state in SlabLM's flat layout (KV caches cut to the tokens seen)."""
        out = []
        for layer in self.layers:
            for buffer in layer.state[: len(layer.state_names)]:
                out.append((buffer[:, :, : self.length] if layer.kind.has_kv_cache else buffer).clone())
        return tuple(out)

    # ------------------------------------------------------------------ accounting

    def _buffers(self) -> list[torch.Tensor]:
        """The tensors a step writes: token, position and the model's state."""
        state = [t for layer in self.layers for t in layer.state[: len(layer.state_names)]]
        return [self.token, self.position, *state]

    def _weights(self) -> list[torch.Tensor]:
        """Every weight tensor the step reads, the embedding table first."""
        tensors = [self.embed_weight, *_tensors(self.final_norm), self.head_w]
        tensors += [] if self.head_b is None else [self.head_b]
        for layer in self.layers:
            tensors += [*_tensors(layer.block), *_tensors(layer.weights)]
        return tensors

    def bytes_per_step(self) -> dict[str, int]:
        """Bytes one step reads: "weights" (of the embedding table only the B rows looked up) and "state"
        (the model's state, the whole static KV cache included: the masked attention reads all of it)."""
        embed, *rest = self._weights()
        weights = self.batch_size * embed.shape[1] * embed.element_size()
        weights += sum(t.numel() * t.element_size() for t in rest)
        state = sum(t.numel() * t.element_size() for t in self._buffers()[2:])
        return {"weights": weights, "state": state}


# ---------------------------------------------------------------------------------------------------------
# generate()'s hook: the decoder for a model, cached until its weights change.

_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, StaticDecoder]] = weakref.WeakKeyDictionary()


def _weights_version(model: nn.Module) -> tuple:
    """Changes when any parameter or buffer is replaced or modified in place (optimizer steps included)."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


def cached_decoder(
    model: nn.Module, batch_size: int, max_len: int | None, dtype: torch.dtype, mode: str
) -> StaticDecoder:
    """A StaticDecoder for `model`, reused while the arguments and the model's weights stay the same.

    One decoder per model is kept (a new key frees the old one first: its weight copies and graph pool).
    """
    has_kv = any(_mixer_kind(block.attn).has_kv_cache for block in model.layers)
    key = (
        batch_size,
        max_len if has_kv else None,
        dtype,
        mode,
        torch.is_inference_mode_enabled(),
        _weights_version(model),
    )
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    _CACHE.pop(model, None)
    decoder = StaticDecoder(model, batch_size, max_len, dtype, mode)
    _CACHE[model] = (key, decoder)
    return decoder


def decoder_for_generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    cuda_graph: bool | None,
    compile_step: bool,
) -> StaticDecoder | None:
    """The static decoder generate() steps with after prefilling input_ids [B, T], or None for SlabLM.step.

    cuda_graph None means: on when the model is on CUDA, B <= MAX_GRAPH_BATCH and every mixer has a static
    step (supports_static_decoding). The compute dtype is the active autocast dtype, else the model's.
    T + max_new_tokens sizes the static KV cache, rounded up to KV_LENGTH_BUCKET. The first call, and the
    first after the weights change, builds the decoder (a few warm-up steps and the capture; compile_step:
    the compilation too); later calls reuse it.
    """
    batch_size, total_len = input_ids.shape[0], input_ids.shape[1] + max_new_tokens
    device = model.embed.weight.device
    if cuda_graph is None:
        cuda_graph = (
            device.type == "cuda" and batch_size <= MAX_GRAPH_BATCH and supports_static_decoding(model)
        )
    if cuda_graph and device.type != "cuda":
        raise InputError(f"cuda_graph=True needs the model on a CUDA device, it is on {device.type}")
    if max_new_tokens < 2 or not (cuda_graph or compile_step):  # one token needs no step at all
        return None
    mode = {(True, False): "graph", (True, True): "compile+graph", (False, True): "compile"}[
        (cuda_graph, compile_step)
    ]
    dtype = (
        torch.get_autocast_dtype(device.type)
        if torch.is_autocast_enabled(device.type)
        else model.head.weight.dtype
    )
    max_len = -(-total_len // KV_LENGTH_BUCKET) * KV_LENGTH_BUCKET
    return cached_decoder(model, batch_size, max_len, dtype, mode)
