"""Gated linear attention (GLA, arXiv 2312.06635): a linear-attention memory with a data-dependent decay.

Per head, with row vectors q_t, k_t [K], v_t [V] and a log forget gate g_t = log alpha_t <= 0 [K]:

    S_t = Diag(exp(g_t)) S_{t-1} + k_t^T v_t      [K, V]
    o_t = scale * q_t S_t                          [V]

Layout follows flash-linear-attention: q, k, g [B, T, H, K], v [B, T, H, V], state [B, H, K, V] (float32).
`scale` defaults to K^-1/2 (fla's default and its GLA layer's).

Forms, equal up to rounding (tests/ops/test_gla.py):
    gla_naive      masked quadratic form, decay exp(b_t - b_s) written out per key channel (definition)
    gla_chunk      chunkwise-parallel, chunk 64 with 16-wide sub-chunks, every exponent <= 0 (see below)
    gla_recurrent  token by token with gla_step (the decoding form)
    gla_fla        CUDA path through fla.ops.gla.chunk_gla

Numerical safety of gla_chunk. With b the cumulative log gate inside a chunk (non-increasing), the textbook
chunk form factors exp(b_i - b_j) = exp(b_i) / exp(b_j) and divides by tiny cumulative products, which
overflows for strong decay. Here every factor is an exponential of a non-positive number:
  * inter-chunk: q_i exp(b_i) S_prev and k_j exp(b_last - b_j) into the next state (b_last <= b_j <= 0);
  * intra-chunk, sub-chunk I after sub-chunk J: with r = b at the first position of I,
    q_i exp(b_i - r) . k_j exp(r - b_j) (b_i <= r <= b_j), two matmul operands each <= 1 in size;
  * intra-chunk, same sub-chunk: the pairwise exponent b_i - b_j, set to -inf above the diagonal before exp.
So nothing overflows and nothing is divided; an underflow to 0 only happens where the true product is 0
to float32 precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_SIZE = 64
SUB_CHUNK_SIZE = 16
#: GLA's gate temperature: log alpha = logsigmoid(x W1 W2 + b) / 16.
GATE_LOGIT_NORMALIZER = 16


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


def zero_state(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Empty state [B, H, K, V] for q [B, T, H, K], v [B, T, H, V], in the compute dtype."""
    b, _, h, k = q.shape
    return q.new_zeros(b, h, k, v.shape[-1], dtype=_compute_dtype(q.dtype))


def gla_gate(logits: torch.Tensor, normalizer: float = GATE_LOGIT_NORMALIZER) -> torch.Tensor:
    """log alpha = logsigmoid(logits) / normalizer, in float32 (the gate cumsums need it)."""
    return F.logsigmoid(logits.float()) / normalizer


def gla_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition as one masked product.

    o_t = scale q_t (sum_{s<=t} Diag(exp(b_t - b_s)) k_s^T v_s + Diag(exp(b_t)) S0).

    O(T^2 K) memory; for tests. b is the cumulative sum of g over the whole sequence.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H, K] log forget gates (<= 0).
        scale: query scale, default K^-1/2.
        initial_state: [B, H, K, V] or None for zeros.

    Returns:
        o [B, T, H, V] in v's dtype, final state [B, H, K, V].
    """
    scale = _scale(q, scale)
    dtype = _compute_dtype(q.dtype)
    s0 = (initial_state if initial_state is not None else zero_state(q, v)).to(dtype)
    q, k, v, g = (x.to(dtype).transpose(1, 2) for x in (q, k, v, g))  # [B, H, T, *]
    t = q.shape[2]
    b = g.cumsum(2)  # [B, H, T, K]
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    expo = (b.unsqueeze(3) - b.unsqueeze(2)).masked_fill(~causal[..., None], float("-inf"))  # [B, H, T, S, K]
    scores = (q.unsqueeze(3) * k.unsqueeze(2) * expo.exp()).sum(-1)  # [B, H, T, S]
    out = scale * (scores @ v + (q * b.exp()) @ s0)
    final = b[:, :, -1:].exp().transpose(-1, -2) * s0 + (k * (b[:, :, -1:] - b).exp()).transpose(-1, -2) @ v
    return out.transpose(1, 2).to(v.dtype), final


def gla_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    state: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step with explicit state in and out.

    Args:
        q, k, g: [B, H, K] for the new token (g = log forget gate); v: [B, H, V].
        state: [B, H, K, V] after the previous token (zeros before the first).
        scale: query scale, default K^-1/2.

    Returns:
        o [B, H, V] in v's dtype, new state [B, H, K, V] in the state's dtype.
    """
    scale = _scale(q, scale)
    dtype = state.dtype
    q, k, g, vv = q.to(dtype), k.to(dtype), g.to(dtype), v.to(dtype)
    state = g.exp().unsqueeze(-1) * state + k.unsqueeze(-1) * vv.unsqueeze(-2)
    o = (q.unsqueeze(-2) @ state).squeeze(-2) * scale  # [B, H, V]
    return o.to(v.dtype), state


def gla_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token loop over gla_step. Shapes as gla_chunk."""
    state = (initial_state if initial_state is not None else zero_state(q, v)).to(_compute_dtype(q.dtype))
    outs = []
    for t in range(q.shape[1]):
        o, state = gla_step(q[:, t], k[:, t], v[:, t], g[:, t], state, scale)
        outs.append(o)
    out = torch.stack(outs, dim=1) if outs else v.new_zeros(v.shape)
    return out, (state if output_final_state else None)


def _chunk_states_loop(s0: torch.Tensor, decay: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """States entering each chunk: S_{n+1} = decay_n * S_n + U_n. decay [B,H,N,K], update [B,H,N,K,V]."""
    states = []
    s = s0
    for i in range(update.shape[2]):
        states.append(s)
        s = decay[:, :, i].unsqueeze(-1) * s + update[:, :, i]
    return torch.stack(states, dim=2)  # [B, H, N, K, V]


def _chunk_states_parallel(s0: torch.Tensor, log_decay: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """Loop-free _chunk_states_loop (for export): S_n = exp(L_n) S0 + sum_{m<n} exp(L_n - L_{m+1}) U_m.

    L_n is the cumulative log decay before chunk n; every exponent is <= 0. Costs O(N^2 K V) per head
    instead of O(N K V), so it suits short prompts (export graphs), not long training sequences.
    """
    n = update.shape[2]
    ends = log_decay.cumsum(2)  # [B, H, N, K]: L_{n+1}
    starts = ends - log_decay  # L_n
    mask = torch.ones(n, n, dtype=torch.bool, device=update.device).tril(-1)  # m < n
    expo = (starts.unsqueeze(3) - ends.unsqueeze(2)).masked_fill(
        ~mask[..., None], float("-inf")
    )  # [B,H,N,M,K]
    weights = expo.exp().permute(0, 1, 4, 2, 3)  # [B, H, K, N, M]
    summed = weights @ update.permute(0, 1, 3, 2, 4)  # [B, H, K, N, V]
    return starts.exp().unsqueeze(-1) * s0.unsqueeze(2) + summed.permute(0, 1, 3, 2, 4)


def gla_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = CHUNK_SIZE,
    sub_chunk_size: int = SUB_CHUNK_SIZE,
    parallel_states: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise-parallel GLA in log space (see the module docstring for why it cannot overflow).

    Any T: the sequence is zero-padded to whole chunks with g = 0 and k = 0 there, which leaves the state
    unchanged; sequences shorter than a chunk use one chunk rounded up to the sub-chunk size.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H, K] log forget gates (<= 0).
        scale: query scale, default K^-1/2.
        initial_state: [B, H, K, V] or None for zeros.
        output_final_state: also return the state after the last token.
        chunk_size: C, a multiple of sub_chunk_size (64).
        sub_chunk_size: c (16): pairs inside a sub-chunk use the [c, c, K] pairwise decay, the rest matmuls.
        parallel_states: compute the chunk-entry states without a Python loop over chunks (export graphs).

    Returns:
        o [B, T, H, V] in v's dtype; final state [B, H, K, V] (compute dtype) if output_final_state else None.
    """
    if chunk_size % sub_chunk_size:
        raise ValueError(f"chunk_size {chunk_size} must be a multiple of sub_chunk_size {sub_chunk_size}")
    scale = _scale(q, scale)
    bsz, t, h, dk = q.shape
    dv = v.shape[-1]
    dtype = _compute_dtype(q.dtype)
    with torch.autocast(device_type=q.device.type, enabled=False):
        s0 = (initial_state if initial_state is not None else zero_state(q, v)).to(dtype)
        # ceil divisions with non-negative numerators: torch.onnx exports // as ONNX Div, which truncates
        # toward zero, so -(-t // c) would become a floor in graphs with a dynamic T
        c = min(chunk_size, (max(t, 1) + sub_chunk_size - 1) // sub_chunk_size * sub_chunk_size)
        n = (t + c - 1) // c
        pad = n * c - t
        qc, kc, vc, gc = (
            F.pad(x.to(dtype), (0, 0, 0, 0, 0, pad)).reshape(bsz, n, c, h, x.shape[-1]).permute(0, 3, 1, 2, 4)
            for x in (q, k, v, g)
        )  # [B, H, N, C, *]
        b = gc.cumsum(-2)  # [B, H, N, C, K] cumulative log decay inside each chunk, <= 0
        b_last = b[..., -1:, :]  # [B, H, N, 1, K]

        # Inter-chunk: state entering each chunk, then its contribution to every query of the chunk.
        update = (kc * (b_last - b).exp()).transpose(-1, -2) @ vc  # [B, H, N, K, V]
        if parallel_states:
            s_in = _chunk_states_parallel(s0, b_last.squeeze(-2), update)
        else:
            s_in = _chunk_states_loop(s0, b_last.squeeze(-2).exp(), update)
        out = (qc * b.exp()) @ s_in  # [B, H, N, C, V]

        # Intra-chunk, split into S = C / c sub-chunks.
        ns, cs = c // sub_chunk_size, sub_chunk_size
        qs, ks, bs = (x.reshape(bsz, h, n, ns, cs, dk) for x in (qc, kc, b))  # [B, H, N, S, c, K]
        ref = bs[..., :1, :]  # [B, H, N, S, 1, K] b at the first position of each sub-chunk
        earlier = torch.ones(ns, ns, dtype=torch.bool, device=q.device).tril(-1)  # J < I
        expo_k = (ref.unsqueeze(4) - bs.unsqueeze(3)).masked_fill(~earlier[:, :, None, None], float("-inf"))
        k_dec = ks.unsqueeze(3) * expo_k.exp()  # [B, H, N, S(I), S(J), c, K]
        q_dec = qs * (bs - ref).exp()  # [B, H, N, S, c, K]
        a_off = q_dec.unsqueeze(4) @ k_dec.transpose(-1, -2)  # [B, H, N, S(I), S(J), c, c]
        causal = torch.ones(cs, cs, dtype=torch.bool, device=q.device).tril()
        expo_d = (bs.unsqueeze(-2) - bs.unsqueeze(-3)).masked_fill(~causal[..., None], float("-inf"))
        a_diag = (qs.unsqueeze(-2) * ks.unsqueeze(-3) * expo_d.exp()).sum(-1)  # [B, H, N, S, c, c]
        eye = torch.eye(ns, dtype=a_off.dtype, device=q.device)[:, :, None, None]
        blocks = a_off + eye * a_diag.unsqueeze(4)  # [B, H, N, S, S, c, c]
        scores = blocks.transpose(4, 5).reshape(bsz, h, n, c, c)  # [B, H, N, C, C]
        out = scale * (out + scores @ vc)

        out = out.permute(0, 2, 3, 1, 4).reshape(bsz, n * c, h, dv)[:, :t]
        final = None
        if output_final_state:
            final = b_last[:, :, -1].squeeze(-2).exp().unsqueeze(-1) * s_in[:, :, -1] + update[:, :, -1]
    return out.to(v.dtype), final


def gla_fla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CUDA path: fla.ops.gla.chunk_gla with our semantics (same layout, g = log forget gate, same scale).

    chunk_gla requires a float32 initial state [N, H, K, V]; g is passed in float32 (fla then keeps the
    gate cumsum from the forward instead of recomputing it). Shapes and returns as gla_chunk.
    """
    from fla.ops.gla import chunk_gla

    return chunk_gla(
        q,
        k,
        v,
        g.float(),
        scale=_scale(q, scale),
        initial_state=None if initial_state is None else initial_state.float().contiguous(),
        output_final_state=output_final_state,
    )
