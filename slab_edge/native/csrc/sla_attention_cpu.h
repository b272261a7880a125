// Fused simplified linear attention (SLA), inference, on the CPU: the contract of sla_attention.h.
//
// Header-only portable C++17 (no intrinsics): the hot loops are small fixed-size register blocks the
// compiler vectorises; on x86-64 with GCC they are also compiled for AVX2+FMA and AVX-512 and picked at
// load time (target_clones), so one library runs on any x86-64 CPU at the best width it has. ARM (Jetson)
// compiles them for NEON, its baseline.
//
// Per (b, h), with q, k [B, N, H, D], v [B, N, H, Dv] and out [B, N, H, Dv]:
//   pass 1  kv = K^T V [D, Dv] and ksum = sum_n K [D], over token chunks in parallel (partial sums);
//   pass 2  the partial sums of each (b, h) are added into its first chunk's slot;
//   pass 3  out = (Q kv) / (Q . ksum + eps) over token tiles in parallel.
// Every product and sum is float32 whatever the I/O dtype; rows are converted to float32 on load.
#ifndef SLAB_SLA_ATTENTION_CPU_H_
#define SLAB_SLA_ATTENTION_CPU_H_

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "sla_attention.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SLAB_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SLAB_CPU_CLONES
#endif

namespace slab_cpu {

// -- float16 / bfloat16 <-> float32 (round to nearest even) -------------------------------------------------
inline float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));  // inf / nan
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
  // zero or subnormal: mantissa * 2^-24, exact in float32
  const float magnitude = float(mantissa) * (1.0f / 16777216.0f);
  return sign ? -magnitude : magnitude;
}

inline uint16_t float_to_half(float f) {
  const uint32_t bits = float_to_bits(f);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
  const uint32_t abs_bits = bits & 0x7fffffffu;
  if (abs_bits >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (abs_bits > 0x7f800000u ? 0x200u : 0u));
  if (abs_bits >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds above 65504: inf
  if (abs_bits < 0x38800000u) {  // below 2^-14: a subnormal half (or zero) in units of 2^-24, exact scaling
    return uint16_t(sign | uint32_t(std::nearbyint(bits_to_float(abs_bits) * 16777216.0f)));  // ties to even
  }
  // normal: drop 13 mantissa bits with round to nearest even (a carry into the exponent is correct)
  const uint32_t rebased = abs_bits - (112u << 23);
  const uint32_t rounded = rebased + 0xfffu + ((rebased >> 13) & 1u);
  return uint16_t(sign | (rounded >> 13));
}

inline float bf16_to_float(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }

inline uint16_t float_to_bf16(float f) {
  const uint32_t bits = float_to_bits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40u);  // quiet nan
  return uint16_t((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// Element access by dtype: a row of `count` elements to / from float32.
inline void load_row(slab_dtype dtype, const void* src, int64_t offset, int64_t count, float* dst) {
  if (dtype == SLAB_FLOAT32) {
    std::memcpy(dst, static_cast<const float*>(src) + offset, size_t(count) * sizeof(float));
    return;
  }
  const uint16_t* row = static_cast<const uint16_t*>(src) + offset;
  if (dtype == SLAB_FLOAT16) {
    for (int64_t i = 0; i < count; ++i) dst[i] = half_to_float(row[i]);
  } else {
    for (int64_t i = 0; i < count; ++i) dst[i] = bf16_to_float(row[i]);
  }
}

inline void store_row(slab_dtype dtype, const float* src, int64_t count, void* dst, int64_t offset) {
  if (dtype == SLAB_FLOAT32) {
    std::memcpy(static_cast<float*>(dst) + offset, src, size_t(count) * sizeof(float));
    return;
  }
  uint16_t* row = static_cast<uint16_t*>(dst) + offset;
  if (dtype == SLAB_FLOAT16) {
    for (int64_t i = 0; i < count; ++i) row[i] = float_to_half(src[i]);
  } else {
    for (int64_t i = 0; i < count; ++i) row[i] = float_to_bf16(src[i]);
  }
}

// -- the two small GEMMs ---------------------------------------------------------------------------------------
constexpr int kTileRows = 32;  // tokens converted to float32 at a time (one tile of q, k or v fits in L1)
constexpr int kRowBlock = 4;   // register block: rows of the output updated together
constexpr int kColBlock = 16;  // register block: output columns (one AVX-512 / two AVX2 / four NEON vectors)

// c[m, :] (+)= sum_p a(m, p) * b[p, :] for m < rows, p < depth, over `cols` columns, with a(m, p) =
// a[m * a_row + p * a_depth] and b, c row-major (leading dimensions ldb, ldc). accumulate=false overwrites c.
SLAB_CPU_CLONES
static inline void small_gemm(const float* a, int64_t a_row, int64_t a_depth, const float* b, int64_t ldb, float* c,
                       int64_t ldc, int rows, int depth, int cols, bool accumulate) {
  for (int m0 = 0; m0 < rows; m0 += kRowBlock) {
    const int mb = std::min(kRowBlock, rows - m0);
    for (int n0 = 0; n0 < cols; n0 += kColBlock) {
      const int nb = std::min(kColBlock, cols - n0);
      float acc[kRowBlock][kColBlock] = {};
      if (mb == kRowBlock && nb == kColBlock) {  // full block: fixed trip counts stay in registers
        for (int p = 0; p < depth; ++p) {
          const float* b_row = b + int64_t(p) * ldb + n0;
          for (int i = 0; i < kRowBlock; ++i) {
            const float a_ip = a[(m0 + i) * a_row + p * a_depth];
            for (int j = 0; j < kColBlock; ++j) acc[i][j] += a_ip * b_row[j];
          }
        }
      } else {
        for (int p = 0; p < depth; ++p) {
          const float* b_row = b + int64_t(p) * ldb + n0;
          for (int i = 0; i < mb; ++i) {
            const float a_ip = a[(m0 + i) * a_row + p * a_depth];
            for (int j = 0; j < nb; ++j) acc[i][j] += a_ip * b_row[j];
          }
        }
      }
      for (int i = 0; i < mb; ++i) {
        float* c_row = c + int64_t(m0 + i) * ldc + n0;
        for (int j = 0; j < nb; ++j) c_row[j] = accumulate ? c_row[j] + acc[i][j] : acc[i][j];
      }
    }
  }
}

// -- the fused forward ---------------------------------------------------------------------------------------
// Work split: pass 1 over (b, h, token chunk), pass 3 over (b, h, token tile group).
struct Plan {
  int64_t heads_total;   // B * H
  int64_t chunks;        // token chunks per (b, h) in pass 1 (each writes its own partial sums)
  int64_t chunk_rows;    // tokens per chunk
  int64_t groups;        // token groups per (b, h) in pass 3
  int64_t group_rows;    // tokens per group
  int64_t state_floats;  // floats of one (kv, ksum) state: D * Dv + D
};

inline Plan make_plan(const slab_sla_shape& s) {
  Plan p;
  p.heads_total = s.batch * s.heads;
  const int64_t min_chunk = 128;  // fewer tokens per chunk cost more in the reduction than they save
  const int64_t wanted = std::max<int64_t>(1, (16 + p.heads_total - 1) / p.heads_total);  // >= 16 tasks
  p.chunks = std::max<int64_t>(1, std::min((s.tokens + min_chunk - 1) / min_chunk, wanted));
  p.chunk_rows = (s.tokens + p.chunks - 1) / p.chunks;
  p.groups = std::max<int64_t>(1, std::min((s.tokens + kTileRows - 1) / kTileRows, 4 * wanted));
  p.group_rows = (s.tokens + p.groups - 1) / p.groups;
  p.state_floats = s.head_dim * s.value_dim + s.head_dim;
  return p;
}

// Workspace of `forward` in bytes: one (kv, ksum) state per (b, h, chunk).
inline size_t workspace_bytes(const slab_sla_shape& s) {
  const Plan p = make_plan(s);
  return size_t(p.heads_total * p.chunks * p.state_floats) * sizeof(float);
}

inline int check_shape(const slab_sla_shape& s) {
  if (s.batch < 1 || s.tokens < 1 || s.heads < 1 || s.head_dim < 1 || s.value_dim < 1) return SLAB_ERR_SHAPE;
  if (s.head_dim > SLAB_SLA_MAX_DIM || s.value_dim > SLAB_SLA_MAX_DIM) return SLAB_ERR_SHAPE;
  return SLAB_OK;
}

// Pass 1 task: partial kv and ksum of tokens [n0, n1) of head `bh` into `state` [D * Dv + D].
inline void accumulate_chunk(slab_dtype dtype, const void* k, const void* v, const slab_sla_shape& s, int64_t bh,
                             int64_t n0, int64_t n1, float* state) {
  const int64_t b = bh / s.heads, h = bh % s.heads, D = s.head_dim, Dv = s.value_dim;
  float* kv = state;
  float* ksum = state + D * Dv;
  std::fill(state, state + D * Dv + D, 0.0f);
  alignas(64) float k_tile[kTileRows * SLAB_SLA_MAX_DIM];
  alignas(64) float v_tile[kTileRows * SLAB_SLA_MAX_DIM];
  for (int64_t t0 = n0; t0 < n1; t0 += kTileRows) {
    const int rows = int(std::min<int64_t>(kTileRows, n1 - t0));
    for (int r = 0; r < rows; ++r) {
      const int64_t token = (b * s.tokens + t0 + r) * s.heads + h;
      load_row(dtype, k, token * D, D, k_tile + r * D);
      load_row(dtype, v, token * Dv, Dv, v_tile + r * Dv);
      for (int64_t d = 0; d < D; ++d) ksum[d] += k_tile[r * D + d];
    }
    // kv[d, :] += sum_r k[r, d] * v[r, :]   (a = K^T: row step 1, depth step D)
    small_gemm(k_tile, 1, D, v_tile, Dv, kv, Dv, int(D), rows, int(Dv), true);
  }
}

// Pass 3 task: out rows [n0, n1) of head `bh` from its reduced state.
inline void apply_group(slab_dtype dtype, const void* q, void* out, const slab_sla_shape& s, int64_t bh,
                        int64_t n0, int64_t n1, const float* state, float eps) {
  const int64_t b = bh / s.heads, h = bh % s.heads, D = s.head_dim, Dv = s.value_dim;
  const float* kv = state;
  const float* ksum = state + D * Dv;
  alignas(64) float q_tile[kTileRows * SLAB_SLA_MAX_DIM];
  alignas(64) float o_tile[kTileRows * SLAB_SLA_MAX_DIM];
  for (int64_t t0 = n0; t0 < n1; t0 += kTileRows) {
    const int rows = int(std::min<int64_t>(kTileRows, n1 - t0));
    for (int r = 0; r < rows; ++r) {
      load_row(dtype, q, ((b * s.tokens + t0 + r) * s.heads + h) * D, D, q_tile + r * D);
    }
    small_gemm(q_tile, D, 1, kv, Dv, o_tile, Dv, rows, int(D), int(Dv), false);
    for (int r = 0; r < rows; ++r) {
      float z = 0.0f;
      for (int64_t d = 0; d < D; ++d) z += q_tile[r * D + d] * ksum[d];
      const float inv = 1.0f / (z + eps);
      float* o_row = o_tile + r * Dv;
      for (int64_t e = 0; e < Dv; ++e) o_row[e] *= inv;
      store_row(dtype, o_row, Dv, out, ((b * s.tokens + t0 + r) * s.heads + h) * Dv);
    }
  }
}

// The whole forward. `parallel_for(count, task)` runs task(i) for every i in [0, count), in any order and on
// any threads, and returns when all are done (the caller's thread pool; a plain loop works).
// `workspace` holds at least workspace_bytes(shape) bytes, float-aligned.
template <typename ParallelFor>
int forward(slab_dtype dtype, const void* q, const void* k, const void* v, void* out, const slab_sla_shape& s,
            float eps, void* workspace, size_t workspace_size, ParallelFor&& parallel_for) {
  if (dtype != SLAB_FLOAT32 && dtype != SLAB_FLOAT16 && dtype != SLAB_BFLOAT16) return SLAB_ERR_DTYPE;
  const int status = check_shape(s);
  if (status != SLAB_OK) return status;
  if (workspace_size < workspace_bytes(s)) return SLAB_ERR_WORKSPACE;
  const Plan p = make_plan(s);
  float* states = static_cast<float*>(workspace);
  parallel_for(size_t(p.heads_total * p.chunks), [&](size_t task) {
    const int64_t bh = int64_t(task) / p.chunks, c = int64_t(task) % p.chunks;
    const int64_t n0 = c * p.chunk_rows, n1 = std::min(s.tokens, n0 + p.chunk_rows);
    accumulate_chunk(dtype, k, v, s, bh, n0, std::max(n0, n1), states + int64_t(task) * p.state_floats);
  });
  if (p.chunks > 1) {
    parallel_for(size_t(p.heads_total), [&](size_t bh) {
      float* total = states + int64_t(bh) * p.chunks * p.state_floats;
      for (int64_t c = 1; c < p.chunks; ++c) {
        const float* part = total + c * p.state_floats;
        for (int64_t i = 0; i < p.state_floats; ++i) total[i] += part[i];
      }
    });
  }
  parallel_for(size_t(p.heads_total * p.groups), [&](size_t task) {
    const int64_t bh = int64_t(task) / p.groups, g = int64_t(task) % p.groups;
    const int64_t n0 = g * p.group_rows, n1 = std::min(s.tokens, n0 + p.group_rows);
    if (n0 < n1) apply_group(dtype, q, out, s, bh, n0, n1, states + bh * p.chunks * p.state_floats, eps);
  });
  return SLAB_OK;
}

}  // namespace slab_cpu

#endif  // SLAB_SLA_ATTENTION_CPU_H_
