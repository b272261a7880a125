"""Causal SLA's normalizer and division as chunk-parallel Triton kernels: the fla training path's last step.

causal_linear_attn_fla gets the numerator q_t S_t from fla's chunk_linear_attn and divides it here by
den_t = q_t . z_t + eps with z_t = z0 + sum_{s<=t} k_s, without ever writing z_t: per chunk of 64 steps

    forward   S_n = sum of k over chunk n                 (kernel 1, every chunk in parallel)
              P_n = z0 + S_0 + ... + S_{n-1}                (torch, on the small [B, N, H, K] tensor)
              den_t = q_t . (P_n + cumsum_chunk(k)_t) + eps (kernel 2, every chunk in parallel; with the
              o_t = num_t / den_t                            division fused into the same kernel)
    backward  dnum_t = do_t / den_t, dden_t = -(do_t . num_t) / den_t^2, and
              G_n = sum over chunk n of dden_t q_t          (kernel 3, or kernel 1 on dden * q)
              R_n = dz_T + G_{n+1} + ... + G_{N-1}          (torch, small)
              dq_t = dden_t z_t (z_t rebuilt as in the forward),
              dk_s = R_n + suffix_sum_chunk(dden q)_s       (kernel 4)

Float32 accumulation; q, k, num read in their own dtype; nothing of size [B, T, H, K] is written besides dq
and dk. The earlier form (fla's single-pass chunk_global_cumsum, parallel over B * H * key blocks only,
writing z_t as float32 and reading it back) trained SLA-350m at 1.24x softmax's speed at T = 16k on the H200,
these kernels at 1.43x (bench/README.md, "Session 5").

causal_normalizer_triton: den [B, T, H, 1] float32 and z_T [B, H, K] float32, like ops.causal_normalizer.
divide_by_normalizer_triton: (num / den in out_dtype, z_T); causal_linear_attn_fla's division.
Proven against the PyTorch forms on a CPU through Triton's interpreter (tests/ops/test_causal_sla_triton.py)
and compiled on CUDA (tests/gpu/test_causal_sla_gpu.py). Import needs triton (it comes with fla).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

CHUNK = 64
NUM_WARPS = 8  # a program holds [64, K] float32 blocks of q, k and z: spread over 256 threads


@triton.jit
def _chunk_block(T, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    """This program's chunk (grid: chunks x B*H): its rows into [B, T, H] [BT], their mask, the [BT, BK]
    offsets and mask into [B, T, H, K], and the [BK] offsets and mask of its row of a [B, N, H, K] tensor."""
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_n * BT + tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    m_t, m_k = o_t < T, o_k < K
    rows = (i_b * T + o_t) * H + i_h
    chunk_row = (i_b * tl.cdiv(T, BT) + i_n) * H + i_h
    return rows, m_t, rows[:, None] * K + o_k[None, :], m_t[:, None] & m_k[None, :], chunk_row * K + o_k, m_k


@triton.jit
def _value_block(rows, m_t, V: tl.constexpr, BV: tl.constexpr):
    """[BT, BV] offsets and mask of the chunk's rows in a [B, T, H, V] tensor."""
    o_v = tl.arange(0, BV)
    return rows[:, None] * V + o_v[None, :], m_t[:, None] & (o_v < V)[None, :]


@triton.jit
def _chunk_sums_kernel(x, w, out, T, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                       HAS_W: tl.constexpr):  # fmt: skip
    """out[b, n, h, :] = sum over the chunk's t of (w[b, t, h] *) x[b, t, h, :], float32."""
    rows, m_t, offs, m, small, m_k = _chunk_block(T, H, K, BT, BK)
    v = tl.load(x + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_W:
        v = v * tl.load(w + rows, mask=m_t, other=0.0).to(tl.float32)[:, None]
    tl.store(out + small, tl.sum(v, axis=0), mask=m_k)


@triton.jit
def _den_kernel(q, k, prefix, den, num, o, eps, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DIVIDE: tl.constexpr):  # fmt: skip
    """den[b, t, h] = q_t . (prefix[b, n, h] + cumsum of k inside the chunk up to t) + eps;
    with DIVIDE also o[b, t, h, :] = num[b, t, h, :] / den[b, t, h] (float32 division, o's dtype)."""
    rows, m_t, offs, m, small, m_k = _chunk_block(T, H, K, BT, BK)
    b_k = tl.load(k + offs, mask=m, other=0.0).to(tl.float32)
    b_q = tl.load(q + offs, mask=m, other=0.0).to(tl.float32)
    b_z = tl.cumsum(b_k, axis=0) + tl.load(prefix + small, mask=m_k, other=0.0)[None, :]
    b_den = tl.sum(b_q * b_z, axis=1) + eps
    tl.store(den + rows, b_den, mask=m_t)
    if DIVIDE:
        offs_v, m_v = _value_block(rows, m_t, V, BV)
        b_num = tl.load(num + offs_v, mask=m_v, other=0.0).to(tl.float32)
        tl.store(o + offs_v, (b_num / b_den[:, None]).to(o.dtype.element_ty), mask=m_v)


@triton.jit
def _divide_bwd_kernel(do, num, den, q, dnum, dden, gsum, T, H: tl.constexpr, K: tl.constexpr,
                       V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):  # fmt: skip
    """Backward of o = num / den: dnum = do / den, dden = -(do . num) / den^2, and the chunk sums
    gsum[b, n, h, :] = sum over the chunk of dden_t q_t (the normalizer's backward carry)."""
    rows, m_t, offs, m, small, m_k = _chunk_block(T, H, K, BT, BK)
    offs_v, m_v = _value_block(rows, m_t, V, BV)
    b_do = tl.load(do + offs_v, mask=m_v, other=0.0).to(tl.float32)
    b_num = tl.load(num + offs_v, mask=m_v, other=0.0).to(tl.float32)
    b_den = tl.load(den + rows, mask=m_t, other=1.0)
    tl.store(dnum + offs_v, (b_do / b_den[:, None]).to(dnum.dtype.element_ty), mask=m_v)
    b_dden = -tl.sum(b_do * b_num, axis=1) / (b_den * b_den)
    tl.store(dden + rows, b_dden, mask=m_t)
    b_q = tl.load(q + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(gsum + small, tl.sum(b_dden[:, None] * b_q, axis=0), mask=m_k)


@triton.jit
def _grad_kernel(q, k, dden, prefix, carry, dq, dk, T, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                 BK: tl.constexpr):  # fmt: skip
    """dq_t = dden_t z_t; dk_s = carry[b, n, h] + sum over t >= s inside the chunk of dden_t q_t."""
    rows, m_t, offs, m, small, m_k = _chunk_block(T, H, K, BT, BK)
    b_k = tl.load(k + offs, mask=m, other=0.0).to(tl.float32)
    b_q = tl.load(q + offs, mask=m, other=0.0).to(tl.float32)
    b_d = tl.load(dden + rows, mask=m_t, other=0.0).to(tl.float32)
    b_z = tl.cumsum(b_k, axis=0) + tl.load(prefix + small, mask=m_k, other=0.0)[None, :]
    b_dk = (
        tl.cumsum(b_d[:, None] * b_q, axis=0, reverse=True)
        + tl.load(carry + small, mask=m_k, other=0.0)[None, :]
    )
    tl.store(dq + offs, (b_d[:, None] * b_z).to(dq.dtype.element_ty), mask=m)
    tl.store(dk + offs, b_dk.to(dk.dtype.element_ty), mask=m)


def _chunk_sums(x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, T, H, K] (weight [B, T, H] or None) -> float32 [B, N, H, K] sums over chunks of CHUNK steps."""
    b, t, h, d = x.shape
    n = triton.cdiv(t, CHUNK)
    out = x.new_empty(b, n, h, d, dtype=torch.float32)
    _chunk_sums_kernel[(n, b * h)](
        x, weight if weight is not None else x, out, t, H=h, K=d, BT=CHUNK, BK=triton.next_power_of_2(d),
        HAS_W=weight is not None,
    )  # fmt: skip
    return out


def _exclusive_prefix(sums: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Sum of the chunks before each chunk (reverse: after it), along dim 1 of [B, N, H, K]."""
    if reverse:
        return _exclusive_prefix(sums.flip(1)).flip(1)
    return F.pad(sums.cumsum(1)[:, :-1], (0, 0, 0, 0, 1, 0))


def _key_prefix(k: torch.Tensor, z0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(z0 + the key sums of the chunks before each chunk [B, N, H, K], z_T [B, H, K]), float32."""
    sums = _chunk_sums(k)
    prefix, z_last = _exclusive_prefix(sums), sums.sum(1)
    if z0 is not None:
        prefix, z_last = prefix + z0.float().unsqueeze(1), z_last + z0.float()
    return prefix, z_last


def _launch_den(q, k, prefix, eps, num=None, out_dtype=None):
    """den [B, T, H] float32, and with num also num / den in out_dtype."""
    b, t, h, d = q.shape
    den = q.new_empty(b, t, h, dtype=torch.float32)
    o = None if num is None else torch.empty(num.shape, dtype=out_dtype, device=num.device)
    dv = d if num is None else num.shape[-1]
    _den_kernel[(triton.cdiv(t, CHUNK), b * h)](
        q, k, prefix, den, num if num is not None else q, o if o is not None else den, eps, t, H=h, K=d, V=dv,
        BT=CHUNK, BK=triton.next_power_of_2(d), BV=triton.next_power_of_2(dv), DIVIDE=num is not None,
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return den, o


def _key_grads(q, k, prefix, dden, grads, dz_last, z0_dtype):
    """(dq, dk, dz0) from dden [B, T, H] float32 and its chunk sums grads = sum_t dden_t q_t [B, N, H, K];
    dz0 is None when there was no z0 (z0_dtype None)."""
    b, t, h, d = q.shape
    dz_last = torch.zeros_like(prefix[:, 0]) if dz_last is None else dz_last.float()
    carry = _exclusive_prefix(grads, reverse=True) + dz_last.unsqueeze(1)
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    _grad_kernel[(triton.cdiv(t, CHUNK), b * h)](
        q, k, dden, prefix, carry, dq, dk, t, H=h, K=d, BT=CHUNK, BK=triton.next_power_of_2(d),
        num_warps=NUM_WARPS,
    )  # fmt: skip
    dz0 = (grads.sum(1) + dz_last).to(z0_dtype) if z0_dtype is not None else None
    return dq, dk, dz0


class _TritonNormalizer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, z0, eps):
        q, k = q.contiguous(), k.contiguous()
        prefix, z_last = _key_prefix(k, z0)
        den, _ = _launch_den(q, k, prefix, eps)
        ctx.save_for_backward(q, k, prefix)
        ctx.z0_dtype = None if z0 is None else z0.dtype
        return den.unsqueeze(-1), z_last

    @staticmethod
    def backward(ctx, dden, dz_last):
        q, k, prefix = ctx.saved_tensors
        dden = dden.squeeze(-1).float().contiguous()
        return (*_key_grads(q, k, prefix, dden, _chunk_sums(q, dden), dz_last, ctx.z0_dtype), None)


class _TritonDivide(torch.autograd.Function):
    @staticmethod
    def forward(ctx, num, q, k, z0, eps, out_dtype):
        num, q, k = num.contiguous(), q.contiguous(), k.contiguous()
        prefix, z_last = _key_prefix(k, z0)
        den, out = _launch_den(q, k, prefix, eps, num, out_dtype)
        ctx.save_for_backward(num, q, k, prefix, den)
        ctx.z0_dtype = None if z0 is None else z0.dtype
        return out, z_last

    @staticmethod
    def backward(ctx, dout, dz_last):
        num, q, k, prefix, den = ctx.saved_tensors
        b, t, h, d = q.shape
        dv = num.shape[-1]
        dnum, dden = torch.empty_like(num), torch.empty_like(den)
        grads = prefix.new_empty(prefix.shape)
        _divide_bwd_kernel[(triton.cdiv(t, CHUNK), b * h)](
            dout.contiguous(), num, den, q, dnum, dden, grads, t, H=h, K=d, V=dv, BT=CHUNK,
            BK=triton.next_power_of_2(d), BV=triton.next_power_of_2(dv), num_warps=NUM_WARPS,
        )  # fmt: skip
        dq, dk, dz0 = _key_grads(q, k, prefix, dden, grads, dz_last, ctx.z0_dtype)
        return dnum, dq, dk, dz0, None, None


def causal_normalizer_triton(
    q: torch.Tensor, k: torch.Tensor, z0: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """ops.causal_normalizer as Triton kernels: (den [B, T, H, 1] float32, z_T [B, H, K] float32).

    q, k [B, T, H, K] on CUDA (or under TRITON_INTERPRET=1), z0 [B, H, K] or None."""
    return _TritonNormalizer.apply(q, k, z0, eps)


def divide_by_normalizer_triton(
    num: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    z0: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(num / den in out_dtype, z_T [B, H, K] float32), den = q_t . z_t + eps as causal_normalizer_triton.

    num [B, T, H, V] (q_t S_t), q, k [B, T, H, K], z0 [B, H, K] or None. The division is done by the
    denominator kernel (forward) and its gradient by the first backward kernel: no passes of their own."""
    return _TritonDivide.apply(num, q, k, z0, eps, out_dtype)
