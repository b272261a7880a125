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

// Branch-free: conditions become all-ones / zero masks, so the row loops below vectorise.
inline uint32_t mask_if(bool condition) { return 0u - uint32_t(condition); }

inline float half_to_float(uint16_t h) {
  const uint32_t shifted = uint32_t(h & 0x7fffu) << 13;  // exponent and mantissa at float positions
  const uint32_t exponent = shifted & 0x0f800000u;
  const uint32_t special = mask_if(exponent == 0x0f800000u);  // inf / nan: keep an all-ones exponent
  const uint32_t small = mask_if(exponent == 0);              // zero / subnormal
  // rebias 15 -> 127; a subnormal becomes 2^-14 (1 + m 2^-10), and subtracting 2^-14 leaves m 2^-24 exactly
  const uint32_t bits = shifted + (112u << 23) + (special & (112u << 23)) + (small & (1u << 23));
  const float magnitude = bits_to_float(bits) - bits_to_float(small & (113u << 23));
  return bits_to_float(float_to_bits(magnitude) | (uint32_t(h & 0x8000u) << 16));
}

inline uint16_t float_to_half(float f) {
  const uint32_t bits = float_to_bits(f);
  const uint32_t magnitude = bits & 0x7fffffffu;
  // normal: drop 13 mantissa bits, round to nearest even (a carry into the exponent is right, up to inf)
  const uint32_t normal = (magnitude - (112u << 23) + 0xfffu + ((magnitude >> 13) & 1u)) >> 13;
  // below 2^-14: adding 0.5 rounds to a multiple of 2^-24 (ties to even): the subnormal's mantissa
  const uint32_t subnormal = float_to_bits(bits_to_float(magnitude) + 0.5f) - (126u << 23);
  const uint32_t special = 0x7c00u | (mask_if(magnitude > 0x7f800000u) & 0x200u);  // inf, or a quiet nan
  const uint32_t big = mask_if(magnitude >= 0x47800000u);  // >= 65536: inf / nan (65520.. rounds up to inf)
  const uint32_t small = mask_if(magnitude < 0x38800000u) & ~big;
  const uint32_t half = (special & big) | (subnormal & small) | (normal & ~(big | small));
  return uint16_t(((bits >> 16) & 0x8000u) | half);
}

inline float bf16_to_float(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }

inline uint16_t float_to_bf16(float f) {
  const uint32_t bits = float_to_bits(f);
  const uint32_t nan = mask_if((bits & 0x7fffffffu) > 0x7f800000u);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;  // nearest even
  return uint16_t((nan & ((bits >> 16) | 0x40u)) | (~nan & rounded));      // a nan stays a (quiet) nan
}

// Element access by dtype: a row of `count` elements to / from float32.
SLAB_CPU_CLONES static void load_row(slab_dtype dtype, const void* src, int64_t offset, int64_t count, float* dst) {
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

SLAB_CPU_CLONES static void store_row(slab_dtype dtype, const float* src, int64_t count, void* dst, int64_t offset) {
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
constexpr int kTileRows = 48;  // tokens converted to float32 at a time (a q, k or v tile: <= 24 KiB, in L1)
constexpr int kRowBlock = 6;   // register block: rows of the output updated together
constexpr int kColBlock = 16;  // register block: output columns (one AVX-512 / two AVX2 / four NEON vectors)

// One register block: c[i, j] (+)= sum_p a(i, p) * b[p, j] for i < Rows (<= kRowBlock), j < kColBlock.
// Fixed trip counts and one statement per row over the same j: the j loop becomes vector FMAs and the row
// accumulators stay in registers across the whole p loop (6 x 16 floats: 12 AVX2 / 24 NEON registers, the
// classic sgemm micro-kernel shape, with enough independent FMA chains to hide their latency).
template <int Rows>
SLAB_CPU_CLONES static void gemm_block(const float* a, int64_t a_row, int64_t a_depth, const float* b,
                                       int64_t ldb, float* c, int64_t ldc, int depth, bool accumulate) {
  static_assert(Rows >= 1 && Rows <= 6, "register block of 1 to 6 rows");
  float c0[kColBlock] = {}, c1[kColBlock] = {}, c2[kColBlock] = {};
  float c3[kColBlock] = {}, c4[kColBlock] = {}, c5[kColBlock] = {};
  for (int p = 0; p < depth; ++p) {
    const float* b_row = b + int64_t(p) * ldb;
    const float* a_col = a + int64_t(p) * a_depth;
    const float a0 = a_col[0];
    const float a1 = Rows > 1 ? a_col[a_row] : 0.0f, a2 = Rows > 2 ? a_col[2 * a_row] : 0.0f;
    const float a3 = Rows > 3 ? a_col[3 * a_row] : 0.0f, a4 = Rows > 4 ? a_col[4 * a_row] : 0.0f;
    const float a5 = Rows > 5 ? a_col[5 * a_row] : 0.0f;
    for (int j = 0; j < kColBlock; ++j) {
      const float b_pj = b_row[j];
      c0[j] += a0 * b_pj;
      if constexpr (Rows > 1) c1[j] += a1 * b_pj;
      if constexpr (Rows > 2) c2[j] += a2 * b_pj;
      if constexpr (Rows > 3) c3[j] += a3 * b_pj;
      if constexpr (Rows > 4) c4[j] += a4 * b_pj;
      if constexpr (Rows > 5) c5[j] += a5 * b_pj;
    }
  }
  const float* acc[6] = {c0, c1, c2, c3, c4, c5};
  for (int i = 0; i < Rows; ++i) {
    float* c_row = c + i * ldc;
    for (int j = 0; j < kColBlock; ++j) c_row[j] = accumulate ? c_row[j] + acc[i][j] : acc[i][j];
  }
}

using GemmBlock = void (*)(const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t, int, bool);

// c[m, :] (+)= sum_p a(m, p) * b[p, :] for m < rows, p < depth, over `cols` columns, with a(m, p) =
// a[m * a_row + p * a_depth] and b, c row-major (leading dimensions ldb, ldc). accumulate=false overwrites c.
// Column blocks of 16 go through gemm_block (the last rows % 6 through its smaller form); the columns past
// the last full block (head dims that are not multiples of 16) through a plain loop.
static inline void small_gemm(const float* a, int64_t a_row, int64_t a_depth, const float* b, int64_t ldb,
                              float* c, int64_t ldc, int rows, int depth, int cols, bool accumulate) {
  static constexpr GemmBlock blocks[kRowBlock + 1] = {nullptr,       gemm_block<1>, gemm_block<2>, gemm_block<3>,
                                                      gemm_block<4>, gemm_block<5>, gemm_block<6>};
  const int full_cols = cols - cols % kColBlock;
  for (int m0 = 0; m0 < rows; m0 += kRowBlock) {
    const GemmBlock block = blocks[std::min(kRowBlock, rows - m0)];
    for (int n0 = 0; n0 < full_cols; n0 += kColBlock) {
      block(a + m0 * a_row, a_row, a_depth, b + n0, ldb, c + m0 * ldc + n0, ldc, depth, accumulate);
    }
  }
  for (int m = 0; m < rows; ++m) {
    for (int n = full_cols; n < cols; ++n) {
      float sum = 0.0f;
      for (int p = 0; p < depth; ++p) sum += a[m * a_row + p * a_depth] * b[int64_t(p) * ldb + n];
      c[m * ldc + n] = accumulate ? c[m * ldc + n] + sum : sum;
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
  p.group_rows = (p.group_rows + kRowBlock - 1) / kRowBlock * kRowBlock;  // whole register blocks
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

// sum_d x[d] * y[d] with 16 partial sums, so it vectorises without reassociation flags.
inline float dot(const float* x, const float* y, int64_t count) {
  float partial[kColBlock] = {};
  int64_t d = 0;
  for (; d + kColBlock <= count; d += kColBlock) {
    for (int j = 0; j < kColBlock; ++j) partial[j] += x[d + j] * y[d + j];
  }
  float sum = 0.0f;
  for (; d < count; ++d) sum += x[d] * y[d];
  for (int j = 0; j < kColBlock; ++j) sum += partial[j];
  return sum;
}

// Pass 1 task: partial kv and ksum of tokens [n0, n1) of head `bh` into `state` [D * Dv + D]. float32 inputs
// are read in place (rows H * D apart); float16 / bfloat16 tiles are converted to float32 first.
inline void accumulate_chunk(slab_dtype dtype, const void* k, const void* v, const slab_sla_shape& s, int64_t bh,
                             int64_t n0, int64_t n1, float* state) {
  const int64_t b = bh / s.heads, h = bh % s.heads, D = s.head_dim, Dv = s.value_dim;
  float* kv = state;
  float* ksum = state + D * Dv;
  std::fill(state, state + D * Dv + D, 0.0f);
  const int64_t first = (b * s.tokens + n0) * s.heads + h;  // token row of (b, n0, h)
  if (dtype == SLAB_FLOAT32) {
    const float* k_rows = static_cast<const float*>(k) + first * D;
    const float* v_rows = static_cast<const float*>(v) + first * Dv;
    const int64_t k_step = s.heads * D, v_step = s.heads * Dv;
    for (int64_t r = 0; r < n1 - n0; ++r) {
      for (int64_t d = 0; d < D; ++d) ksum[d] += k_rows[r * k_step + d];
    }
    // kv[d, :] += sum_r k[r, d] v[r, :]: a = K^T (row step 1, depth step one token)
    small_gemm(k_rows, 1, k_step, v_rows, v_step, kv, Dv, int(D), int(n1 - n0), int(Dv), true);
    return;
  }
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
    small_gemm(k_tile, 1, D, v_tile, Dv, kv, Dv, int(D), rows, int(Dv), true);
  }
}

// Pass 3 task: out rows [n0, n1) of head `bh` from its reduced state (float32 in place, as in pass 1).
inline void apply_group(slab_dtype dtype, const void* q, void* out, const slab_sla_shape& s, int64_t bh,
                        int64_t n0, int64_t n1, const float* state, float eps) {
  const int64_t b = bh / s.heads, h = bh % s.heads, D = s.head_dim, Dv = s.value_dim;
  const float* kv = state;
  const float* ksum = state + D * Dv;
  const int64_t first = (b * s.tokens + n0) * s.heads + h;
  if (dtype == SLAB_FLOAT32) {
    const float* q_rows = static_cast<const float*>(q) + first * D;
    float* o_rows = static_cast<float*>(out) + first * Dv;
    const int64_t q_step = s.heads * D, o_step = s.heads * Dv;
    small_gemm(q_rows, q_step, 1, kv, Dv, o_rows, o_step, int(n1 - n0), int(D), int(Dv), false);
    for (int64_t r = 0; r < n1 - n0; ++r) {
      const float inv = 1.0f / (dot(q_rows + r * q_step, ksum, D) + eps);
      for (int64_t e = 0; e < Dv; ++e) o_rows[r * o_step + e] *= inv;
    }
    return;
  }
  alignas(64) float q_tile[kTileRows * SLAB_SLA_MAX_DIM];
  alignas(64) float o_tile[kTileRows * SLAB_SLA_MAX_DIM];
  for (int64_t t0 = n0; t0 < n1; t0 += kTileRows) {
    const int rows = int(std::min<int64_t>(kTileRows, n1 - t0));
    for (int r = 0; r < rows; ++r) {
      load_row(dtype, q, ((b * s.tokens + t0 + r) * s.heads + h) * D, D, q_tile + r * D);
    }
    small_gemm(q_tile, D, 1, kv, Dv, o_tile, Dv, rows, int(D), int(Dv), false);
    for (int r = 0; r < rows; ++r) {
      const float inv = 1.0f / (dot(q_tile + r * D, ksum, D) + eps);
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
