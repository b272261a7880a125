"""Gated linear attention (GLA, arXiv 2312.06635): a linear-attention memory with a data-dependent decay.

Per head, with row vectors q_t, k_t [K], v_t [V] and a log forget gate g_t = log alpha_t <= 0 [K]:

    S_t = Diag(exp(g_t)) S_{t-1} + k_t^T v_t      [K, V]
    o_t = scale * q_t S_t                          [V]

Layout follows flash-linear-attention: q, k, g [B, T, H, K], v [B, T, H, V], state [B, H, K, V] (float32).
`scale` defaults to K^-1/2 (fla's default and its GLA layer's).

Forms, equal up to rounding (tests/ops/test_gla.py):
    gla_naive      masked quadratic form, decay exp(b_t - b_s) written out per key channel (definition)
    gla_chunk      chunkwise-parallel, chunk 64 split by halving down to blocks of 4, every exponent <= 0
    gla_recurrent  token by token with gla_step (the decoding form)
    gla_fla        CUDA path through fla.ops.gla.chunk_gla

Numerical safety of gla_chunk. With b the cumulative log gate inside a chunk (non-increasing), the textbook
chunk form factors exp(b_i - b_j) = exp(b_i) / exp(b_j) and divides by tiny cumulative products, which
overflows for strong decay. Here every factor is an exponential of a non-positive number:
  * inter-chunk: q_i exp(b_i) S_prev and k_j exp(b_last - b_j) into the next state (b_last <= b_j <= 0);
  * intra-chunk, by halving: a block's right half R attends to its left half L through
    q_i exp(b_i - r) . k_j exp(r - b_j) with r = b at the first position of R (b_i <= r <= b_j), two matmul
    operands each <= 1 in size; halving the chunk down to leaves of 4 positions covers every pair i > j
    once, with log2(C / 4) matmul levels;
  * inside a leaf: the pairwise exponent b_i - b_j, set to -inf above the diagonal before exp.
So nothing overflows and nothing is divided; an underflow to 0 only happens where the true product is 0
to float32 precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_SIZE = 64
#: Smallest block of the intra-chunk halving; pairs inside it use the [4, 4, K] pairwise decay.
LEAF_SIZE = 4
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
    # autocast off as in the chunk form: under it q S would run in bf16 and round the state to 8 bits
    with torch.autocast(device_type=q.device.type, enabled=False):
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


def _intra_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: torch.Tensor, leaf: int
) -> torch.Tensor:
    """sum_{j <= i in the chunk} (q_i . k_j exp(b_i - b_j)) v_j for every i, without any positive exponent.

    q, k, b: [B, H, N, C, K]; v: [B, H, N, C, V]; C = leaf * 2^levels. Returns [B, H, N, C, V] (unscaled).
    """
    bsz, h, n, c, dk = q.shape
    dv = v.shape[-1]
    # leaves: every pair j <= i inside a block of `leaf` positions, pairwise decay masked in log space
    ql, kl, bl = (x.reshape(bsz, h, n, c // leaf, leaf, dk) for x in (q, k, b))
    causal = torch.ones(leaf, leaf, dtype=torch.bool, device=q.device).tril()
    expo = (bl.unsqueeze(-2) - bl.unsqueeze(-3)).masked_fill(~causal[..., None], float("-inf"))
    scores = (ql.unsqueeze(-2) * kl.unsqueeze(-3) * expo.exp()).sum(-1)  # [B, H, N, C/leaf, leaf, leaf]
    out = (scores @ v.reshape(bsz, h, n, c // leaf, leaf, dv)).reshape(bsz, h, n, c, dv)
    # halving levels: the right half of each block of 2 * half positions attends to its left half
    half = leaf
    while half < c:
        blocks = c // (2 * half)
        qb, kb, bb, vb = (x.reshape(bsz, h, n, blocks, 2, half, x.shape[-1]) for x in (q, k, b, v))
        ref = bb[..., 1, :1, :]  # [B, H, N, blocks, 1, K] b at the first position of the right half
        q_dec = qb[..., 1, :, :] * (bb[..., 1, :, :] - ref).exp()  # right half, exponents <= 0
        k_dec = kb[..., 0, :, :] * (ref - bb[..., 0, :, :]).exp()  # left half, exponents <= 0
        right = (q_dec @ k_dec.transpose(-1, -2)) @ vb[..., 0, :, :]  # [B, H, N, blocks, half, V]
        out = out + torch.stack([torch.zeros_like(right), right], dim=-3).reshape(bsz, h, n, c, dv)
        half *= 2
    return out


def gla_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = CHUNK_SIZE,
    leaf_size: int = LEAF_SIZE,
    parallel_states: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise-parallel GLA in log space (see the module docstring for why it cannot overflow).

    Any T: the sequence is zero-padded to whole chunks with g = 0 and k = 0 there, which leaves the state
    unchanged. Every Python-level size depends on chunk_size only, never on T, so export graphs keep a
    dynamic sequence length.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H, K] log forget gates (<= 0).
        scale: query scale, default K^-1/2.
        initial_state: [B, H, K, V] or None for zeros.
        output_final_state: also return the state after the last token.
        chunk_size: C (64), leaf_size times a power of two.
        leaf_size: smallest block of the intra-chunk halving (4).
        parallel_states: compute the chunk-entry states without a Python loop over chunks (export graphs).

    Returns:
        o [B, T, H, V] in v's dtype; final state [B, H, K, V] (compute dtype) if output_final_state else None.
    """
    ratio = chunk_size // leaf_size
    if leaf_size < 1 or chunk_size % leaf_size or ratio & (ratio - 1):
        raise ValueError(f"chunk_size {chunk_size} must be leaf_size {leaf_size} times a power of two")
    scale = _scale(q, scale)
    bsz, t, h, dk = q.shape
    dv = v.shape[-1]
    dtype = _compute_dtype(q.dtype)
    with torch.autocast(device_type=q.device.type, enabled=False):
        s0 = (initial_state if initial_state is not None else zero_state(q, v)).to(dtype)
        c = chunk_size
        n = (t + c - 1) // c  # ceil without negative floor division (ONNX Div truncates: dynamic T)
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
        out = scale * ((qc * b.exp()) @ s_in + _intra_chunk(qc, kc, vc, b, leaf_size))  # [B, H, N, C, V]

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
