"""Causal simplified linear attention: ReLU-kernel linear attention with a running normalizer + short conv.

Per head, with non-negative features q_t = ReLU(.), k_t = ReLU(.) (row vectors) and values v_t:

    S_t = S_{t-1} + k_t^T v_t          [K, V]   running key-value memory
    z_t = z_{t-1} + k_t                [K]      running normalizer
    o_t = q_t S_t / (q_t . z_t + eps)  [V]

plus a causal depthwise convolution over the values (kernel W, e.g. 4) added to o — the causal counterpart of
the vision SLA's 5x5 DWC (REFERENCE §1, §5). Layout follows flash-linear-attention: q, k [B, T, H, K],
v [B, T, H, V]; recurrent state S [B, H, K, V] and z [B, H, K] in float32; conv state [B, C, W-1] (the last
W-1 inputs of the conv, oldest first, C = H * V).

Three forms of the attention core, equal up to rounding (tests/ops/test_causal_sla.py):
    causal_linear_attn_naive      quadratic masked form over the whole sequence (the definition)
    causal_linear_attn_chunk      chunkwise-parallel: quadratic inside chunks of 64, states across chunks
                                  by a cumulative sum (no Python loop over chunks: export-friendly)
    causal_linear_attn_recurrent  token by token with causal_linear_attn_step (the decoding form)
and causal_linear_attn_fla, the CUDA path through fla's chunk_linear_attn (see its docstring for how the
normalizer semantics are matched).

The attention core is computed in float32 (float64 stays float64), with autocast off, as the vision SLA core
does: the key sums and the division overflow or lose precision in half precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CAUSAL_SLA_EPS = 1e-6
CHUNK_SIZE = 64

State = tuple[torch.Tensor, torch.Tensor]  # (S [B, H, K, V], z [B, H, K])


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def zero_state(q: torch.Tensor, v: torch.Tensor) -> State:
    """Zeros S [B, H, K, V] and z [B, H, K] (compute dtype) for q [B, T, H, K], v [B, T, H, V]."""
    b, _, h, k = q.shape
    dtype = _compute_dtype(q.dtype)
    return q.new_zeros(b, h, k, v.shape[-1], dtype=dtype), q.new_zeros(b, h, k, dtype=dtype)


def causal_linear_attn_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eps: float = CAUSAL_SLA_EPS,
    initial_state: State | None = None,
) -> tuple[torch.Tensor, State]:
    """The definition as one masked quadratic product (reference for tests; O(T^2) memory).

    Args:
        q: [B, T, H, K] non-negative query features.
        k: [B, T, H, K] non-negative key features.
        v: [B, T, H, V] values.
        eps: added to the normalizer q_t . z_t.
        initial_state: (S0 [B, H, K, V], z0 [B, H, K]) carried from earlier tokens, or None for zeros.

    Returns:
        o [B, T, H, V] in v's dtype, and the final (S, z).
    """
    dtype = _compute_dtype(q.dtype)
    s0, z0 = initial_state if initial_state is not None else zero_state(q, v)
    q, k, v = (x.to(dtype).transpose(1, 2) for x in (q, k, v))  # [B, H, T, *]
    s0, z0 = s0.to(dtype), z0.to(dtype)
    t = q.shape[2]
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0.0)  # [B, H, T, T]
    num = scores @ v + q @ s0  # [B, H, T, V]
    den = scores.sum(-1, keepdim=True) + q @ z0.unsqueeze(-1) + eps  # [B, H, T, 1]
    out = (num / den).transpose(1, 2).to(v.dtype)
    final = (s0 + k.transpose(-1, -2) @ v, z0 + k.sum(2))
    return out, final


def causal_linear_attn_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: State, eps: float = CAUSAL_SLA_EPS
) -> tuple[torch.Tensor, State]:
    """One decoding step with explicit state in and out.

    Args:
        q, k: [B, H, K] non-negative features of the new token.
        v: [B, H, V].
        state: (S [B, H, K, V], z [B, H, K]) after the previous token (zeros before the first).

    Returns:
        o [B, H, V] in v's dtype, and the new (S, z) in the state's dtype.
    """
    s, z = state
    q, k, vv = q.to(s.dtype), k.to(s.dtype), v.to(s.dtype)
    # autocast off as in the chunk form: under it q S would run in bf16 and round the state to 8 bits
    with torch.autocast(device_type=q.device.type, enabled=False):
        s = s + k.unsqueeze(-1) * vv.unsqueeze(-2)  # [B, H, K, V]
        z = z + k
        num = (q.unsqueeze(-2) @ s).squeeze(-2)  # [B, H, V]
        den = (q * z).sum(-1, keepdim=True) + eps  # [B, H, 1]
    return (num / den).to(v.dtype), (s, z)


def causal_linear_attn_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eps: float = CAUSAL_SLA_EPS,
    initial_state: State | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, State | None]:
    """Token-by-token loop over causal_linear_attn_step. Shapes as causal_linear_attn_naive."""
    state = initial_state if initial_state is not None else zero_state(q, v)
    dtype = _compute_dtype(q.dtype)
    state = (state[0].to(dtype), state[1].to(dtype))
    outs = []
    for t in range(q.shape[1]):
        o, state = causal_linear_attn_step(q[:, t], k[:, t], v[:, t], state, eps)
        outs.append(o)
    out = torch.stack(outs, dim=1) if outs else v.new_zeros(v.shape)
    return out, (state if output_final_state else None)


def causal_linear_attn_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eps: float = CAUSAL_SLA_EPS,
    initial_state: State | None = None,
    output_final_state: bool = False,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, State | None]:
    """Chunkwise-parallel form: masked products inside chunks, cumulative sums of states across chunks.

    Any T: the last partial chunk is zero-padded (zero keys add nothing to S or z). Shorter sequences use one
    chunk of T tokens. Cost O(T C (K + V) + T K V) per head with C = chunk_size.

    Args:
        q: [B, T, H, K] non-negative query features.
        k: [B, T, H, K] non-negative key features.
        v: [B, T, H, V] values.
        eps: added to the normalizer.
        initial_state: (S0 [B, H, K, V], z0 [B, H, K]) or None for zeros.
        output_final_state: also return the state after the last token.
        chunk_size: C (64 by default).

    Returns:
        o [B, T, H, V] in v's dtype; (S [B, H, K, V], z [B, H, K]) float32 if output_final_state else None.
    """
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    dtype = _compute_dtype(q.dtype)
    with torch.autocast(device_type=q.device.type, enabled=False):
        s0, z0 = initial_state if initial_state is not None else zero_state(q, v)
        s0, z0 = s0.to(dtype), z0.to(dtype)
        c = min(chunk_size, max(t, 1))
        n = (t + c - 1) // c  # ceil without negative floor division (ONNX Div truncates: dynamic T)
        pad = n * c - t
        qc, kc, vc = (
            F.pad(x.to(dtype), (0, 0, 0, 0, 0, pad)).reshape(b, n, c, h, x.shape[-1]).permute(0, 3, 1, 2, 4)
            for x in (q, k, v)
        )  # [B, H, N, C, *]
        # States entering each chunk: S0 plus the exclusive cumulative sum of per-chunk k^T v (and of k).
        # Shifted, not cumsum(x) - x: where q . z + eps ~ eps the gradients reaching the states are ~1/eps
        # and the subtraction would cancel them catastrophically in the backward pass.
        kv = kc.transpose(-1, -2) @ vc  # [B, H, N, K, V]
        ksum = kc.sum(-2)  # [B, H, N, K]
        s_in = torch.cat(
            [s0.unsqueeze(2), s0.unsqueeze(2) + kv[:, :, :-1].cumsum(2)], dim=2
        )  # [B, H, N, K, V]
        z_in = torch.cat(
            [z0.unsqueeze(2), z0.unsqueeze(2) + ksum[:, :, :-1].cumsum(2)], dim=2
        )  # [B, H, N, K]
        causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
        scores = (qc @ kc.transpose(-1, -2)).masked_fill(~causal, 0.0)  # [B, H, N, C, C]
        num = qc @ s_in + scores @ vc  # [B, H, N, C, V]
        den = (qc @ z_in.unsqueeze(-1)) + scores.sum(-1, keepdim=True) + eps  # [B, H, N, C, 1]
        out = (num / den).permute(0, 2, 3, 1, 4).reshape(b, n * c, h, dv)[:, :t]
        final = None
        if output_final_state:
            final = (s_in[:, :, -1] + kv[:, :, -1], z_in[:, :, -1] + ksum[:, :, -1])
    return out.to(v.dtype), final


def causal_linear_attn_fla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eps: float = CAUSAL_SLA_EPS,
    initial_state: State | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, State | None]:
    """CUDA path: fla's chunk_linear_attn for the numerator, our float32 normalizer for the denominator.

    fla 0.6.0's `normalize=True` computes o = scale q S / (scale q . cumsum(k) + 1e-10): the eps is fixed at
    1e-10 and divided by `scale`, the key cumsum is rounded to the input dtype (bf16 in mixed precision),
    and the normalizer state travels as a separate `[B, 1, H, K]` tuple member. To get exactly our semantics
    (eps added to q . z, z in float32, z carried as [B, H, K]) we call it with `scale=1.0, normalize=False`,
    which returns the plain numerator q_t S_t, and divide it by q_t . z_t + eps in float32 with
    divide_by_normalizer_triton (chunk-parallel Triton kernels, ops/causal_sla_triton.py; the same maths as
    num / causal_normalizer(...)[0]). Shapes and returns as causal_linear_attn_chunk.
    """
    from fla.ops.linear_attn import chunk_linear_attn

    from slab_edge.ops import causal_sla_triton  # module attribute: the training bench swaps the function

    s0, z0 = initial_state if initial_state is not None else (None, None)
    num, s_final = chunk_linear_attn(
        q,
        k,
        v,
        scale=1.0,
        initial_state=None if s0 is None else s0.float().contiguous(),
        output_final_state=output_final_state,
        normalize=False,
    )
    with torch.autocast(device_type=q.device.type, enabled=False):
        out, z_last = causal_sla_triton.divide_by_normalizer_triton(num, q, k, z0, eps, v.dtype)
    final = (s_final, z_last) if output_final_state else None
    return out, final


def time_scan(x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Inclusive cumulative sum along T of x [B, T, H, K] (reversed: suffix sums), in the compute dtype.

    The sum runs along the last axis of a [B, H, K, T] copy: PyTorch's CUDA cumsum scans an outer axis with
    one thread per column walking all T steps (ATen's scan_outer_dim), which made SLA's training 2x slower
    at T = 16k on the H200.
    """
    x = x.to(_compute_dtype(x.dtype)).movedim(1, -1)  # [B, H, K, T]
    z = x.flip(-1).cumsum(-1).flip(-1) if reverse else x.cumsum(-1)
    return z.movedim(-1, 1)


def causal_normalizer(
    q: torch.Tensor, k: torch.Tensor, z0: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 q_t . (z0 + sum_{s<=t} k_s) + eps for every t, and the running key sum after the last token.

    Args:
        q, k: [B, T, H, K] (after the ReLU maps); z0: [B, H, K] or None (zeros).

    Returns:
        den [B, T, H, 1] float32; z [B, H, K] float32.

    PyTorch form (any device; the reference for the Triton kernels of causal_sla_triton), plain autograd.
    """
    z = time_scan(k.float())  # [B, T, H, K]
    if z0 is not None:
        z = z + z0.float().unsqueeze(1)
    den = (q.float() * z).sum(-1, keepdim=True) + eps  # [B, T, H, 1]
    return den, z[:, -1]


# ---------------------------------------------------------------------------------------------------------
# Causal depthwise ("short") convolution over time, with a conv state for decoding.


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    conv_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal depthwise conv: y_t = sum_i weight[:, i] * x_{t - (W-1) + i} + bias (no activation).

    Args:
        x: [B, T, C].
        weight: [C, 1, W] (an nn.Conv1d(C, C, W, groups=C) weight) or [C, W].
        bias: [C] or None.
        conv_state: [B, C, W-1] the last W-1 inputs before x (oldest first), or None for zeros.
        output_final_state: also return the conv state after x.

    Returns:
        y [B, T, C] in x's dtype; new conv state [B, C, W-1] if output_final_state else None.
    """
    b, t, ch = x.shape
    w = weight.reshape(ch, 1, -1)
    width = w.shape[-1]
    xt = x.transpose(1, 2)  # [B, C, T]
    if conv_state is None:
        conv_state = xt.new_zeros(b, ch, width - 1)
    padded = torch.cat([conv_state.to(xt.dtype), xt], dim=-1)  # [B, C, W-1+T]
    y = F.conv1d(padded, w.to(xt.dtype), None if bias is None else bias.to(xt.dtype), groups=ch)  # [B, C, T]
    new_state = padded[..., padded.shape[-1] - (width - 1) :] if output_final_state else None
    return y.transpose(1, 2), new_state


def causal_conv1d_fla(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """causal_conv1d from zero history on CUDA through fla's Triton causal_conv1d (training path).

    x [B, T, C], weight [C, 1, W] or [C, W], bias [C] or None -> y [B, T, C] in x's dtype. One kernel each
    way on the [B, T, C] layout, where the cuDNN form pays transposes, a concatenated zero history and three
    backward kernels: SLA-350m trained at 1.43x -> 1.65x softmax's speed at T = 16k on the H200
    (bench/README.md).
    No conv state in or out: prefill and decoding use causal_conv1d.
    """
    from fla.modules.causal_conv1d import causal_conv1d as fla_causal_conv1d  # fla >= 0.6

    return fla_causal_conv1d(x, weight.reshape(x.shape[-1], -1), bias)[0]


def causal_conv1d_step(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of causal_conv1d. x [B, C], conv_state [B, C, W-1] -> (y [B, C], new conv_state)."""
    ch = x.shape[-1]
    w = weight.reshape(ch, -1).to(x.dtype)  # [C, W]
    window = torch.cat([conv_state.to(x.dtype), x.unsqueeze(-1)], dim=-1)  # [B, C, W]
    y = (window * w).sum(-1)
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y, window[..., 1:]


def causal_conv1d_naive(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    conv_state: torch.Tensor | None = None,
) -> torch.Tensor:
    """Element-wise definition of causal_conv1d for tests: x [B, T, C] -> y [B, T, C]."""
    b, t, ch = x.shape
    w = weight.reshape(ch, -1)
    width = w.shape[-1]
    history = conv_state.transpose(1, 2) if conv_state is not None else x.new_zeros(b, width - 1, ch)
    seq = torch.cat([history, x], dim=1)  # [B, W-1+T, C]; seq[t + W-1] is x_t
    y = torch.stack([sum(w[:, i] * seq[:, s + i] for i in range(width)) for s in range(t)], dim=1)
    return y + bias if bias is not None else y


# ---------------------------------------------------------------------------------------------------------
# The whole causal SLA token mixer: ReLU maps, attention core, short conv on v added to the output.

SLAState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (S [B,H,K,V], z [B,H,K], conv [B, H*V, W-1])

_CORES = {
    "chunk": causal_linear_attn_chunk,
    "recurrent": causal_linear_attn_recurrent,
    "fla": causal_linear_attn_fla,
}


def causal_sla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None = None,
    state: SLAState | None = None,
    output_final_state: bool = False,
    mode: str = "chunk",
    eps: float = CAUSAL_SLA_EPS,
) -> tuple[torch.Tensor, SLAState | None]:
    """o = LinearAttn(ReLU(q), ReLU(k), v) + CausalDWConv(v), per head, before the output projection.

    Args:
        q, k: [B, T, H, K] projected queries and keys (the ReLU feature map is applied here).
        v: [B, T, H, V] projected values.
        conv_weight: [H*V, 1, W] depthwise conv over the value channels; conv_bias [H*V] or None.
        state: (S, z, conv_state) from earlier tokens or None.
        output_final_state: also return the state after the last token.
        mode: "chunk" | "recurrent" | "fla" (CUDA + flash-linear-attention: fla's kernels for the attention
            numerator and, without a state in or out, for the conv; our Triton kernels for the normalizer).
        eps: normalizer eps.

    Returns:
        o [B, T, H, V] in v's dtype; (S [B, H, K, V] fp32, z [B, H, K] fp32, conv [B, H*V, W-1]) or None.
    """
    b, t, h, dv = v.shape
    attn_state = None if state is None else (state[0], state[1])
    o, attn_final = _CORES[mode](F.relu(q), F.relu(k), v, eps, attn_state, output_final_state)
    if mode == "fla" and state is None and not output_final_state:
        local, conv_final = causal_conv1d_fla(v.reshape(b, t, h * dv), conv_weight, conv_bias), None
    else:
        local, conv_final = causal_conv1d(
            v.reshape(b, t, h * dv),
            conv_weight,
            conv_bias,
            None if state is None else state[2],
            output_final_state,
        )
    o = o + local.reshape(b, t, h, dv)
    return o, ((*attn_final, conv_final) if output_final_state else None)


def causal_sla_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    state: SLAState,
    eps: float = CAUSAL_SLA_EPS,
) -> tuple[torch.Tensor, SLAState]:
    """One decoding step of causal_sla. q, k [B, H, K], v [B, H, V]; returns (o [B, H, V], new state)."""
    b, h, dv = v.shape
    o, (s, z) = causal_linear_attn_step(F.relu(q), F.relu(k), v, (state[0], state[1]), eps)
    local, conv = causal_conv1d_step(v.reshape(b, h * dv), conv_weight, conv_bias, state[2])
    return o + local.reshape(b, h, dv), (s, z, conv)
