// Fused SLA forward on the GPU: the CUDA half of sla_attention.h (fp32 / fp16 / bf16 I/O, fp32 accumulation).
//
// Design (why):
// * Both products run on tensor cores through WMMA (sm_80+): fp16 / bf16 inputs are exact in the MMA type
//   and accumulate in fp32; fp32 inputs are split into two TF32 halves (hi + lo, "3xTF32": a*b ~ ah*bh +
//   ah*bl + al*bh), which keeps ~fp32 accuracy at a fraction of the CUDA-core FMA time.
// * sum K rides along with K^T V: V gets a column of ones, so kv = K^T [V | 1] ([D, Dv+1]) holds ksum in its
//   last column, and one Q @ kv gives numerator and denominator together.
// * Phase 2 multiplies Q (16-bit) by kv (fp32). kv is stored as two 16-bit planes (hi + lo, ~16 significant
//   bits) so that the product keeps fp32-like accuracy on tensor cores. For fp16, whose range kv can exceed,
//   kv is first scaled by a power of two per (b, h) (exact; eps is scaled alike, so num / den is unchanged).
// * Plans, all chosen from the shape alone (results and workspace do not depend on the device):
//   - single kernel when B*H >= kFusedMinPairs or N <= kMinChunkTokens: one block per (b, h) accumulates kv over
//     all N in registers, keeps it in shared memory and applies it to every token tile (no workspace traffic);
//   - otherwise N is split in chunks: kernel 1 writes a partial kv per (b, h, chunk) in fp32, kernel 2 sums the
//     partials in a fixed order (deterministic, no float atomics), kernel 3 applies kv per (b, h, token tile).
// * Global loads and stores are 16-byte vectors only when the head dims and pointers allow it (D, Dv multiples of
//   16 bytes of elements, 16-byte aligned tensors), else per element: no misaligned vector access.
// * Nothing synchronises the host; every kernel goes on the caller's stream, workspace is the caller's memory.
//
// The source also compiles as host C++ against tests/native/emulation/cuda_host_emulation.h (a CPU emulation of
// the few CUDA features used here), so CI checks the tiling, padding and reduction logic without a GPU.
#include "sla_attention.h"

#ifndef SLAB_SLA_HOST_EMULATION
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#endif

#include <stdint.h>
#include <string.h>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "sla_attention_cuda.cu needs sm_80 or newer (bf16 / tf32 tensor cores)"
#endif

#ifndef SLAB_CHECK_ALIGNED
#define SLAB_CHECK_ALIGNED(pointer, bytes) ((void)0)
#endif

#ifdef SLAB_SLA_HOST_EMULATION
#define SLAB_DYNAMIC_SMEM(name) unsigned char* name = ::emu::dynamic_smem()
#define SLAB_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ((void)(stream), ::emu::launch(kernel, grid, block, smem, __VA_ARGS__))
#else
#define SLAB_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#define SLAB_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

namespace {

namespace wmma = nvcuda::wmma;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 16;                       // WMMA tile rows / columns
constexpr int64_t kFusedMinPairs = 256;         // B*H from which one block per (b, h) fills a GPU
constexpr int64_t kMinChunkTokens = 128;        // shortest N chunk worth a partial kv of its own
constexpr int64_t kTargetPartialBlocks = 512;   // split N until about this many phase-1 blocks
constexpr int64_t kTargetApplyBlocks = 768;     // phase-3 blocks aimed at (token tiles are looped beyond)
constexpr int kMaxGridY = 65535;
constexpr size_t kSmemAlign = 128;
constexpr size_t kWorkspaceAlign = 256;
constexpr size_t kDefaultSmemLimit = 48 * 1024;  // above this a kernel must opt in

template <typename T>
__host__ __device__ __forceinline__ T min_of(T a, T b) { return a < b ? a : b; }
template <typename T>
__host__ __device__ __forceinline__ T max_of(T a, T b) { return a < b ? b : a; }
template <typename T>
__host__ __device__ __forceinline__ T ceil_div(T a, T b) { return (a + b - 1) / b; }
__host__ __device__ __forceinline__ size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

// Per I/O dtype: the tensor-core element type and depth of one MMA, the tokens per shared-memory tile, whether
// inputs are split into hi + lo TF32 halves, and whether kv needs a power-of-two scale to fit the MMA type.
template <typename T>
struct Io;

template <>
struct Io<float> {
  using Mma = wmma::precision::tf32;
  static constexpr int kK = 8;
  static constexpr int kTokens = 32;
  static constexpr bool kSplitInputs = true;
  static constexpr bool kScaleKv = false;
  static constexpr int kRowPad = 4;  // elements of padding per shared-memory row (16 bytes: fewer bank conflicts)
  __device__ static float to_float(float x) { return x; }
  __device__ static float from_float(float x) { return x; }
};

template <typename T, bool kScale>
struct Io16 {  // exact inputs in the MMA type itself
  using Mma = T;
  static constexpr int kK = 16;
  static constexpr int kTokens = 64;
  static constexpr bool kSplitInputs = false;
  static constexpr bool kScaleKv = kScale;
  static constexpr int kRowPad = 8;
};

template <>
struct Io<__half> : Io16<__half, true> {  // K^T V sums exceed fp16's 65504 easily
  __device__ static float to_float(__half x) { return __half2float(x); }
  __device__ static __half from_float(float x) { return __float2half_rn(x); }
};

template <>
struct Io<__nv_bfloat16> : Io16<__nv_bfloat16, false> {  // bf16 has fp32's range
  __device__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

template <typename T>
using Acc = wmma::fragment<wmma::accumulator, kTile, kTile, Io<T>::kK, float>;
template <typename T>
using FragAColMajor = wmma::fragment<wmma::matrix_a, kTile, kTile, Io<T>::kK, typename Io<T>::Mma, wmma::col_major>;
template <typename T>
using FragARowMajor = wmma::fragment<wmma::matrix_a, kTile, kTile, Io<T>::kK, typename Io<T>::Mma, wmma::row_major>;
template <typename T>
using FragB = wmma::fragment<wmma::matrix_b, kTile, kTile, Io<T>::kK, typename Io<T>::Mma, wmma::row_major>;

// Kernel arguments: the shape, the plan and the shared-memory layout of one kernel (byte offsets from the
// dynamic shared-memory base; leading dims in elements). kv is [d_pad, e_pad] with e = dv + 1 (the ones column).
struct Params {
  int64_t tokens, heads;
  int d, dv, d_pad, e_pad;
  int64_t chunk_tokens;  // tokens per phase-1 block of the split plan
  int chunks;
  float eps;
  int vec_qk, vec_v;  // 16-byte vector access allowed for rows of q / k, and of v / out
  int ldk, ldv, ldq, ldo, ldb, lds;
  int off_k, off_v, off_kv, off_stage, off_q, off_out, off_red;
};

template <typename P>
__device__ __forceinline__ P* smem_at(unsigned char* base, int offset) {
  return reinterpret_cast<P*>(base + offset);
}

__device__ __forceinline__ uint4 load16(const void* p) {
  SLAB_CHECK_ALIGNED(p, 16);
  return *reinterpret_cast<const uint4*>(p);
}

__device__ __forceinline__ void store16(void* p, uint4 x) {
  SLAB_CHECK_ALIGNED(p, 16);
  *reinterpret_cast<uint4*>(p) = x;
}

// Rows [0, valid) of a [rows, cols] slab (row r at src + r * stride) into dst[r * ld + c]; rows [valid, rows)
// become zeros. Columns from cols on are left alone.
template <typename T>
__device__ void load_rows(T* dst, int ld, const T* src, int64_t stride, int valid, int rows, int cols, int vec) {
  if (vec) {
    constexpr int kV = 16 / sizeof(T);
    const int per_row = cols / kV;
    for (int i = threadIdx.x; i < rows * per_row; i += kThreads) {
      const int r = i / per_row, c = (i - r * per_row) * kV;
      uint4 x = make_uint4(0u, 0u, 0u, 0u);
      if (r < valid) x = load16(src + r * stride + c);
      store16(dst + r * ld + c, x);
    }
  } else {
    const T zero = Io<T>::from_float(0.f);
    for (int i = threadIdx.x; i < rows * cols; i += kThreads) {
      const int r = i / cols, c = i - r * cols;
      dst[r * ld + c] = r < valid ? src[r * stride + c] : zero;
    }
  }
}

// Columns [c0, c1) of rows [0, rows) of dst set to value.
template <typename T>
__device__ void fill_columns(T* dst, int ld, int rows, int c0, int c1, T value) {
  const int width = c1 - c0;
  if (width <= 0) return;
  for (int i = threadIdx.x; i < rows * width; i += kThreads) {
    const int r = i / width;
    dst[r * ld + c0 + (i - r * width)] = value;
  }
}

template <typename Frag>
__device__ __forceinline__ void split_tf32(const Frag& x, Frag& hi, Frag& lo) {
#pragma unroll
  for (int i = 0; i < x.num_elements; ++i) {
    const float h = wmma::__float_to_tf32(x.x[i]);
    hi.x[i] = h;
    lo.x[i] = wmma::__float_to_tf32(x.x[i] - h);
  }
}

// acc += a @ b for inputs in the I/O dtype: exact 16-bit inputs, or 3xTF32 for fp32 (small terms first).
template <typename T, typename FA, typename FBt>
__device__ __forceinline__ void mma_inputs(Acc<T>& acc, const FA& a, const FBt& b) {
  if constexpr (Io<T>::kSplitInputs) {
    FA a_hi, a_lo;
    FBt b_hi, b_lo;
    split_tf32(a, a_hi, a_lo);
    split_tf32(b, b_hi, b_lo);
    wmma::mma_sync(acc, a_lo, b_hi, acc);
    wmma::mma_sync(acc, a_hi, b_lo, acc);
    wmma::mma_sync(acc, a_hi, b_hi, acc);
  } else {
    wmma::mma_sync(acc, a, b, acc);
  }
}

// ---------------------------------------------------------------------------------------------- phase 1
// acc (the warp's kv tiles: tile t = warp + i * kWarps of the [d_pad / 16, e_pad / 16] grid) += K^T [V | 1] over
// `count` tokens whose k rows start at k_rows (stride heads * d) and v rows at v_rows (stride heads * dv).
template <typename T, int kTpw>
__device__ void accumulate_kv(Acc<T> (&acc)[kTpw], const T* k_rows, const T* v_rows, int64_t count,
                              const Params& p, unsigned char* smem) {
  using Tr = Io<T>;
  T* ks = smem_at<T>(smem, p.off_k);  // [kTokens, ldk]
  T* vs = smem_at<T>(smem, p.off_v);  // [kTokens, ldv]
  const T zero = Tr::from_float(0.f), one = Tr::from_float(1.f);
  fill_columns(ks, p.ldk, Tr::kTokens, p.d, p.d_pad, zero);
  fill_columns(vs, p.ldv, Tr::kTokens, p.dv, p.dv + 1, one);
  fill_columns(vs, p.ldv, Tr::kTokens, p.dv + 1, p.e_pad, zero);
  const int tiles_e = p.e_pad / kTile, tiles = (p.d_pad / kTile) * tiles_e, warp = threadIdx.x / 32;
  const int64_t k_stride = p.heads * p.d, v_stride = p.heads * p.dv;
  for (int64_t n0 = 0; n0 < count; n0 += Tr::kTokens) {
    const int valid = static_cast<int>(min_of<int64_t>(Tr::kTokens, count - n0));
    __syncthreads();  // the previous tile is consumed
    load_rows(ks, p.ldk, k_rows + n0 * k_stride, k_stride, valid, Tr::kTokens, p.d, p.vec_qk);
    load_rows(vs, p.ldv, v_rows + n0 * v_stride, v_stride, valid, Tr::kTokens, p.dv, p.vec_v);
    __syncthreads();
    const int steps = ceil_div(valid, Tr::kK);
#pragma unroll
    for (int i = 0; i < kTpw; ++i) {
      const int t = warp + i * kWarps;
      if (t < tiles) {
        const int m0 = (t / tiles_e) * kTile, c0 = (t % tiles_e) * kTile;
        for (int s = 0; s < steps; ++s) {
          FragAColMajor<T> a;  // K^T: element (d, n) at ks[n * ldk + d]
          FragB<T> b;
          wmma::load_matrix_sync(a, ks + s * Tr::kK * p.ldk + m0, p.ldk);
          wmma::load_matrix_sync(b, vs + s * Tr::kK * p.ldv + c0, p.ldv);
          mma_inputs<T>(acc[i], a, b);
        }
      }
    }
  }
}

// The warp's kv tiles into dst ([d_pad, ld] row-major fp32).
template <typename T, int kTpw>
__device__ void store_kv(const Acc<T> (&acc)[kTpw], float* dst, int ld, const Params& p) {
  const int tiles_e = p.e_pad / kTile, tiles = (p.d_pad / kTile) * tiles_e, warp = threadIdx.x / 32;
#pragma unroll
  for (int i = 0; i < kTpw; ++i) {
    const int t = warp + i * kWarps;
    if (t < tiles) {
      float* tile = dst + (t / tiles_e) * kTile * ld + (t % tiles_e) * kTile;
      wmma::store_matrix_sync(tile, acc[i], ld, wmma::mem_row_major);
    }
  }
}

// ---------------------------------------------------------------------------------------------- phase 2
// The power of two that brings max |kv| into [2^14, 2^15) (fp16 tensor-core inputs), 1 for 0 / inf / NaN.
__device__ __forceinline__ float kv_scale(float max_abs) {
  if (!(max_abs > 0.f) || !isfinite(max_abs)) return 1.f;
  int exponent = 0;
  frexpf(max_abs, &exponent);  // max_abs = m * 2^exponent, m in [0.5, 1)
  exponent = max_of(-85, min_of(exponent, 115));
  return ldexpf(1.f, 15 - exponent);
}

// kv (fp32 [d_pad, ld_src] at src, global or shared) into the shared-memory planes phase 2 multiplies with:
// fp32 as is (split per fragment), 16-bit as hi + lo planes of kv * scale. Returns scale (1 unless kScaleKv).
template <typename T>
__device__ float prepare_kv(const float* src, int ld_src, const Params& p, unsigned char* smem) {
  using Tr = Io<T>;
  const int n = p.d_pad * p.e_pad;
  float scale = 1.f;
  if constexpr (Tr::kScaleKv) {
    float* red = smem_at<float>(smem, p.off_red);  // [kThreads]
    float m = 0.f;
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const int r = i / p.e_pad;
      m = fmaxf(m, fabsf(src[r * ld_src + (i - r * p.e_pad)]));
    }
    red[threadIdx.x] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int i = 1; i < kThreads; ++i) m = fmaxf(m, red[i]);
      red[0] = m;
    }
    __syncthreads();
    scale = kv_scale(red[0]);
  }
  if constexpr (Tr::kSplitInputs) {
    float* plane = smem_at<float>(smem, p.off_kv);
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const int r = i / p.e_pad, c = i - r * p.e_pad;
      plane[r * p.ldb + c] = src[r * ld_src + c];
    }
  } else {
    T* hi = smem_at<T>(smem, p.off_kv);
    T* lo = hi + p.d_pad * p.ldb;
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const int r = i / p.e_pad, c = i - r * p.e_pad;
      const float x = src[r * ld_src + c] * scale;
      const T h = Tr::from_float(x);
      hi[r * p.ldb + c] = h;
      lo[r * p.ldb + c] = Tr::from_float(x - Tr::to_float(h));
    }
  }
  return scale;
}

// acc += a @ kv[k0 : k0 + kK, c0 : c0 + 16] from the planes prepare_kv wrote.
template <typename T>
__device__ __forceinline__ void mma_kv(Acc<T>& acc, const FragARowMajor<T>& a, unsigned char* smem, int k0, int c0,
                                       const Params& p) {
  if constexpr (Io<T>::kSplitInputs) {
    FragB<T> b;
    wmma::load_matrix_sync(b, smem_at<float>(smem, p.off_kv) + k0 * p.ldb + c0, p.ldb);
    mma_inputs<T>(acc, a, b);
  } else {
    const T* hi = smem_at<T>(smem, p.off_kv);
    FragB<T> b_hi, b_lo;
    wmma::load_matrix_sync(b_hi, hi + k0 * p.ldb + c0, p.ldb);
    wmma::load_matrix_sync(b_lo, hi + p.d_pad * p.ldb + k0 * p.ldb + c0, p.ldb);
    wmma::mma_sync(acc, a, b_lo, acc);
    wmma::mma_sync(acc, a, b_hi, acc);
  }
}

// out rows = (q rows @ kv)[:, :dv] / ((q rows @ kv)[:, dv] + eps) for `valid` tokens from q_rows / out_rows
// (strides heads * d / heads * dv). The q tile's pad columns must already be zero (fill_columns once).
// One barrier before the MMAs suffices: the previous tile's MMAs read qs before its second barrier, and its
// write-out reads os, which this tile writes only after its own first barrier.
template <typename T>
__device__ void apply_tile(const T* q_rows, T* out_rows, int valid, float eps, const Params& p, unsigned char* smem) {
  using Tr = Io<T>;
  T* qs = smem_at<T>(smem, p.off_q);            // [kTokens, ldq]
  float* os = smem_at<float>(smem, p.off_out);  // [kTokens, ldo]
  load_rows(qs, p.ldq, q_rows, p.heads * p.d, valid, Tr::kTokens, p.d, p.vec_qk);
  __syncthreads();  // q tile, q pads and kv planes written
  const int tiles_e = p.e_pad / kTile, tiles = ceil_div(valid, kTile) * tiles_e, warp = threadIdx.x / 32;
  for (int t = warp; t < tiles; t += kWarps) {
    const int r0 = (t / tiles_e) * kTile, c0 = (t % tiles_e) * kTile;
    Acc<T> acc;
    wmma::fill_fragment(acc, 0.f);
    for (int k0 = 0; k0 < p.d_pad; k0 += Tr::kK) {
      FragARowMajor<T> a;
      wmma::load_matrix_sync(a, qs + r0 * p.ldq + k0, p.ldq);
      mma_kv<T>(acc, a, smem, k0, c0, p);
    }
    wmma::store_matrix_sync(os + r0 * p.ldo + c0, acc, p.ldo, wmma::mem_row_major);
  }
  __syncthreads();
  const int64_t stride = p.heads * p.dv;
  if (p.vec_v) {
    constexpr int kV = 16 / sizeof(T);
    const int per_row = p.dv / kV;
    for (int i = threadIdx.x; i < valid * per_row; i += kThreads) {
      const int r = i / per_row, c = (i - r * per_row) * kV;
      const float* row = os + r * p.ldo;
      const float den = row[p.dv] + eps;
      T values[kV];
#pragma unroll
      for (int j = 0; j < kV; ++j) values[j] = Tr::from_float(row[c + j] / den);
      uint4 packed;
      memcpy(&packed, values, sizeof(packed));  // registers only; no type-punned load
      store16(out_rows + r * stride + c, packed);
    }
  } else {
    for (int i = threadIdx.x; i < valid * p.dv; i += kThreads) {
      const int r = i / p.dv, c = i - r * p.dv;
      const float* row = os + r * p.ldo;
      out_rows[r * stride + c] = Tr::from_float(row[c] / (row[p.dv] + eps));
    }
  }
}

// ---------------------------------------------------------------------------------------------- kernels
// Single-kernel plan: one block per (b, h), grid (B*H).
template <typename T, int kTpw>
__global__ void __launch_bounds__(kThreads)
    slab_sla_fused_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ out,
                          Params p) {
  using Tr = Io<T>;
  SLAB_DYNAMIC_SMEM(smem);
  const int64_t pair = blockIdx.x, b = pair / p.heads, h = pair - b * p.heads;
  const int64_t first = b * p.tokens * p.heads + h;  // row index of (b, n = 0, h)
  Acc<T> acc[kTpw];
#pragma unroll
  for (int i = 0; i < kTpw; ++i) wmma::fill_fragment(acc[i], 0.f);
  accumulate_kv<T, kTpw>(acc, k + first * p.d, v + first * p.dv, p.tokens, p, smem);
  __syncthreads();  // phase-1 tiles consumed: their region is reused from here
  float scale = 1.f;
  if constexpr (Tr::kSplitInputs) {
    store_kv<T, kTpw>(acc, smem_at<float>(smem, p.off_kv), p.ldb, p);
  } else {
    store_kv<T, kTpw>(acc, smem_at<float>(smem, p.off_stage), p.lds, p);
    __syncthreads();
    scale = prepare_kv<T>(smem_at<float>(smem, p.off_stage), p.lds, p, smem);
    __syncthreads();  // the stage is read: the q tile may overwrite it
  }
  fill_columns(smem_at<T>(smem, p.off_q), p.ldq, Tr::kTokens, p.d, p.d_pad, Tr::from_float(0.f));
  const float eps = p.eps * scale;
  for (int64_t n0 = 0; n0 < p.tokens; n0 += Tr::kTokens) {
    const int valid = static_cast<int>(min_of<int64_t>(Tr::kTokens, p.tokens - n0));
    const int64_t row = first + n0 * p.heads;
    apply_tile<T>(q + row * p.d, out + row * p.dv, valid, eps, p, smem);
  }
}

// Split plan, kernel 1: partial kv of chunk blockIdx.y of pair blockIdx.x -> partial[pair, chunk] ([d_pad, e_pad]).
template <typename T, int kTpw>
__global__ void __launch_bounds__(kThreads)
    slab_sla_kv_partial_kernel(const T* __restrict__ k, const T* __restrict__ v, float* __restrict__ partial, Params p) {
  SLAB_DYNAMIC_SMEM(smem);
  const int64_t pair = blockIdx.x, b = pair / p.heads, h = pair - b * p.heads;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * p.chunk_tokens;
  const int64_t row = (b * p.tokens + n0) * p.heads + h;
  Acc<T> acc[kTpw];
#pragma unroll
  for (int i = 0; i < kTpw; ++i) wmma::fill_fragment(acc[i], 0.f);
  accumulate_kv<T, kTpw>(acc, k + row * p.d, v + row * p.dv, min_of(p.chunk_tokens, p.tokens - n0), p, smem);
  const int64_t slice = static_cast<int64_t>(p.d_pad) * p.e_pad;
  store_kv<T, kTpw>(acc, partial + (pair * p.chunks + blockIdx.y) * slice, p.e_pad, p);
}

// Split plan, kernel 2: kv[pair] = sum over chunks of partial[pair, chunk], in chunk order.
__global__ void __launch_bounds__(kThreads)
    slab_sla_kv_reduce_kernel(const float* __restrict__ partial, float* __restrict__ kv, int chunks, int64_t slice,
                              int64_t total) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= total) return;
  const int64_t pair = i / slice;
  const float* src = partial + pair * chunks * slice + (i - pair * slice);
  float sum = 0.f;
  for (int c = 0; c < chunks; ++c) sum += src[c * slice];
  kv[i] = sum;
}

// Split plan, kernel 3: token tiles blockIdx.y, blockIdx.y + gridDim.y, ... of pair blockIdx.x.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    slab_sla_apply_kernel(const T* __restrict__ q, const float* __restrict__ kv, T* __restrict__ out, Params p) {
  using Tr = Io<T>;
  SLAB_DYNAMIC_SMEM(smem);
  const int64_t pair = blockIdx.x, b = pair / p.heads, h = pair - b * p.heads;
  const int64_t first = b * p.tokens * p.heads + h;
  const float scale = prepare_kv<T>(kv + pair * p.d_pad * p.e_pad, p.e_pad, p, smem);
  fill_columns(smem_at<T>(smem, p.off_q), p.ldq, Tr::kTokens, p.d, p.d_pad, Tr::from_float(0.f));
  const float eps = p.eps * scale;
  const int64_t tiles = ceil_div<int64_t>(p.tokens, Tr::kTokens);
  for (int64_t t = blockIdx.y; t < tiles; t += gridDim.y) {
    const int64_t n0 = t * Tr::kTokens;
    const int valid = static_cast<int>(min_of<int64_t>(Tr::kTokens, p.tokens - n0));
    const int64_t row = first + n0 * p.heads;
    apply_tile<T>(q + row * p.d, out + row * p.dv, valid, eps, p, smem);
  }
}

// ---------------------------------------------------------------------------------------------- host side
int check_shape(const slab_sla_shape& s) {
  if (s.batch < 1 || s.tokens < 1 || s.heads < 1 || s.head_dim < 1 || s.value_dim < 1) return SLAB_ERR_SHAPE;
  if (s.head_dim > SLAB_SLA_MAX_DIM || s.value_dim > SLAB_SLA_MAX_DIM) return SLAB_ERR_SHAPE;
  if (s.batch > INT32_MAX / s.heads) return SLAB_ERR_SHAPE;  // B*H blocks on grid x
  if (s.tokens > INT64_MAX / (s.batch * s.heads * SLAB_SLA_MAX_DIM)) return SLAB_ERR_SHAPE;  // element offsets
  return SLAB_OK;
}

int64_t padded_dim(int64_t d) { return ceil_div<int64_t>(d, kTile) * kTile; }

bool is_fused_plan(int64_t pairs, int64_t tokens) { return pairs >= kFusedMinPairs || tokens <= kMinChunkTokens; }

// Chunks of N for the split plan: enough phase-1 blocks, none shorter than kMinChunkTokens.
int64_t chunk_count(int64_t pairs, int64_t tokens) {
  return min_of(ceil_div(tokens, kMinChunkTokens), ceil_div(kTargetPartialBlocks, pairs));
}

// kv slices (each [d_pad, e_pad] fp32) the split plan needs at most for this N and any B*H up to `pairs`:
// B*H * chunks partials + B*H sums, with chunks * B*H <= kTargetPartialBlocks - 1 + B*H. Non-decreasing in
// every dimension, so a workspace sized for a shape serves all smaller ones.
int64_t workspace_slices(int64_t pairs, int64_t tokens) {
  if (tokens <= kMinChunkTokens) return 0;
  const int64_t p = min_of(pairs, kFusedMinPairs - 1);
  const int64_t per_pair = min_of(ceil_div(tokens, kMinChunkTokens), kTargetPartialBlocks);
  return min_of(p * per_pair, kTargetPartialBlocks - 1 + p) + p;
}

template <typename T>
struct Plan {
  Params fused, partial, apply;
  size_t smem_fused = 0, smem_partial = 0, smem_apply = 0;
  int64_t pairs = 0;
  int tpw = 1;
  bool single_kernel = true;
  int apply_grid_y = 1;
};

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename T>
Plan<T> make_plan(const slab_sla_shape& s, float eps, const void* q, const void* k, const void* v, const void* out) {
  using Tr = Io<T>;
  constexpr int kV = 16 / sizeof(T);
  Plan<T> plan;
  Params p{};
  p.tokens = s.tokens;
  p.heads = s.heads;
  p.d = static_cast<int>(s.head_dim);
  p.dv = static_cast<int>(s.value_dim);
  p.d_pad = static_cast<int>(padded_dim(s.head_dim));
  p.e_pad = static_cast<int>(padded_dim(s.value_dim + 1));
  p.eps = eps;
  p.vec_qk = p.d % kV == 0 && aligned16(q) && aligned16(k);
  p.vec_v = p.dv % kV == 0 && aligned16(v) && aligned16(out);
  const int pad = Tr::kRowPad;
  p.ldk = p.ldq = p.d_pad + pad;
  p.ldv = p.e_pad + pad;
  p.ldb = p.e_pad + (Tr::kSplitInputs ? 4 : pad);
  p.ldo = p.lds = p.e_pad + 4;
  const size_t tile_k = align_up(sizeof(T) * Tr::kTokens * p.ldk, kSmemAlign);
  const size_t tile_v = align_up(sizeof(T) * Tr::kTokens * p.ldv, kSmemAlign);
  const size_t planes = align_up(Tr::kSplitInputs ? sizeof(float) * p.d_pad * p.ldb : 2 * sizeof(T) * p.d_pad * p.ldb,
                                 kSmemAlign);
  const size_t stage = align_up(sizeof(float) * p.d_pad * p.lds, kSmemAlign);
  const size_t tile_q = align_up(sizeof(T) * Tr::kTokens * p.ldq, kSmemAlign);
  const size_t tile_out = align_up(sizeof(float) * Tr::kTokens * p.ldo, kSmemAlign);
  const size_t red = sizeof(float) * kThreads;

  plan.pairs = s.batch * s.heads;
  const int tiles = (p.d_pad / kTile) * (p.e_pad / kTile);
  plan.tpw = tiles <= kWarps ? 1 : tiles <= 3 * kWarps ? 3 : tiles <= 5 * kWarps ? 5 : 9;
  plan.single_kernel = is_fused_plan(plan.pairs, s.tokens);

  // single kernel: kv planes, then one region reused by the phase-1 tiles, the fp32 kv stage, the q / out tiles
  Params f = p;
  f.off_kv = 0;
  const size_t region = planes;
  const size_t region_size = max_of(tile_k + tile_v, max_of(Tr::kSplitInputs ? 0 : stage, tile_q + tile_out));
  f.off_k = static_cast<int>(region);
  f.off_v = static_cast<int>(region + tile_k);
  f.off_stage = static_cast<int>(region);
  f.off_q = static_cast<int>(region);
  f.off_out = static_cast<int>(region + tile_q);
  f.off_red = static_cast<int>(region + region_size);
  f.chunks = 1;
  f.chunk_tokens = s.tokens;
  plan.fused = f;
  plan.smem_fused = region + region_size + red;

  Params a = p;
  a.chunks = static_cast<int>(max_of<int64_t>(1, chunk_count(plan.pairs, s.tokens)));
  a.chunk_tokens = align_up(static_cast<size_t>(ceil_div<int64_t>(s.tokens, a.chunks)), Tr::kTokens);
  a.chunks = static_cast<int>(ceil_div<int64_t>(s.tokens, a.chunk_tokens));
  a.off_k = 0;
  a.off_v = static_cast<int>(tile_k);
  plan.partial = a;
  plan.smem_partial = tile_k + tile_v;
  a.off_kv = 0;
  a.off_q = static_cast<int>(planes);
  a.off_out = static_cast<int>(planes + tile_q);
  a.off_red = static_cast<int>(planes + tile_q + tile_out);
  plan.apply = a;
  plan.smem_apply = planes + tile_q + tile_out + red;
  const int64_t token_tiles = ceil_div<int64_t>(s.tokens, Tr::kTokens);
  plan.apply_grid_y = static_cast<int>(
      min_of<int64_t>(min_of(token_tiles, max_of<int64_t>(1, ceil_div(kTargetApplyBlocks, plan.pairs))), kMaxGridY));
  return plan;
}

int cuda_status(cudaError_t error) { return error == cudaSuccess ? SLAB_OK : SLAB_ERR_CUDA_BASE + static_cast<int>(error); }

// Kernels with more than the default 48 KB of dynamic shared memory must say so (cheap; legal while capturing).
int allow_smem(const void* kernel, size_t bytes) {
  if (bytes <= kDefaultSmemLimit) return SLAB_OK;
  return cuda_status(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

#define SLAB_RETURN_IF_ERROR(expr)        \
  do {                                    \
    const int status_ = (expr);           \
    if (status_ != SLAB_OK) return status_; \
  } while (0)

template <typename T, int kTpw>
int launch(const Plan<T>& plan, const T* q, const T* k, const T* v, T* out, void* workspace, cudaStream_t stream) {
  const dim3 block(kThreads);
  if (plan.single_kernel) {
    auto kernel = &slab_sla_fused_kernel<T, kTpw>;
    SLAB_RETURN_IF_ERROR(allow_smem(reinterpret_cast<const void*>(kernel), plan.smem_fused));
    SLAB_LAUNCH(kernel, dim3(static_cast<unsigned>(plan.pairs)), block, plan.smem_fused, stream, q, k, v, out,
                plan.fused);
    return cuda_status(cudaGetLastError());
  }
  const Params& a = plan.apply;
  const int64_t slice = static_cast<int64_t>(a.d_pad) * a.e_pad;
  float* partial = reinterpret_cast<float*>(align_up(reinterpret_cast<uintptr_t>(workspace), kWorkspaceAlign));
  float* kv = partial + plan.pairs * a.chunks * slice;

  auto partial_kernel = &slab_sla_kv_partial_kernel<T, kTpw>;
  SLAB_RETURN_IF_ERROR(allow_smem(reinterpret_cast<const void*>(partial_kernel), plan.smem_partial));
  SLAB_LAUNCH(partial_kernel, dim3(static_cast<unsigned>(plan.pairs), static_cast<unsigned>(a.chunks)), block,
              plan.smem_partial, stream, k, v, partial, plan.partial);
  SLAB_RETURN_IF_ERROR(cuda_status(cudaGetLastError()));

  auto reduce_kernel = &slab_sla_kv_reduce_kernel;
  const int64_t total = plan.pairs * slice;
  SLAB_LAUNCH(reduce_kernel, dim3(static_cast<unsigned>(ceil_div<int64_t>(total, kThreads))), block, 0, stream,
              partial, kv, a.chunks, slice, total);
  SLAB_RETURN_IF_ERROR(cuda_status(cudaGetLastError()));

  auto apply_kernel = &slab_sla_apply_kernel<T>;
  SLAB_RETURN_IF_ERROR(allow_smem(reinterpret_cast<const void*>(apply_kernel), plan.smem_apply));
  SLAB_LAUNCH(apply_kernel, dim3(static_cast<unsigned>(plan.pairs), static_cast<unsigned>(plan.apply_grid_y)), block,
              plan.smem_apply, stream, q, kv, out, plan.apply);
  return cuda_status(cudaGetLastError());
}

template <typename T>
int forward(const void* q, const void* k, const void* v, void* out, const slab_sla_shape& shape, float eps,
            void* workspace, cudaStream_t stream) {
  const Plan<T> plan = make_plan<T>(shape, eps, q, k, v, out);
  const T* qt = static_cast<const T*>(q);
  const T* kt = static_cast<const T*>(k);
  const T* vt = static_cast<const T*>(v);
  T* ot = static_cast<T*>(out);
  switch (plan.tpw) {
    case 1: return launch<T, 1>(plan, qt, kt, vt, ot, workspace, stream);
    case 3: return launch<T, 3>(plan, qt, kt, vt, ot, workspace, stream);
    case 5: return launch<T, 5>(plan, qt, kt, vt, ot, workspace, stream);
    default: return launch<T, 9>(plan, qt, kt, vt, ot, workspace, stream);
  }
}

}  // namespace

extern "C" size_t slab_sla_cuda_workspace_bytes(slab_sla_shape shape) {
  if (check_shape(shape) != SLAB_OK) return 0;
  const int64_t slices = workspace_slices(shape.batch * shape.heads, shape.tokens);
  if (slices == 0) return 0;
  const size_t slice = static_cast<size_t>(padded_dim(shape.head_dim) * padded_dim(shape.value_dim + 1));
  return static_cast<size_t>(slices) * slice * sizeof(float) + kWorkspaceAlign;
}

extern "C" int slab_sla_cuda_forward(slab_dtype dtype, const void* q, const void* k, const void* v, void* out,
                                     slab_sla_shape shape, float eps, void* workspace, size_t workspace_bytes,
                                     void* stream) {
  if (dtype != SLAB_FLOAT32 && dtype != SLAB_FLOAT16 && dtype != SLAB_BFLOAT16) return SLAB_ERR_DTYPE;
  SLAB_RETURN_IF_ERROR(check_shape(shape));
  const size_t needed = slab_sla_cuda_workspace_bytes(shape);
  if (needed > 0 && (workspace == nullptr || workspace_bytes < needed)) return SLAB_ERR_WORKSPACE;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case SLAB_FLOAT32: return forward<float>(q, k, v, out, shape, eps, workspace, s);
    case SLAB_FLOAT16: return forward<__half>(q, k, v, out, shape, eps, workspace, s);
    default: return forward<__nv_bfloat16>(q, k, v, out, shape, eps, workspace, s);
  }
}

extern "C" const char* slab_sla_status_string(int status) {
  switch (status) {
    case SLAB_OK: return "success";
    case SLAB_ERR_SHAPE: return "invalid shape: every dimension must be >= 1 and D, Dv <= 128";
    case SLAB_ERR_DTYPE: return "unsupported dtype (float32, float16 or bfloat16)";
    case SLAB_ERR_WORKSPACE: return "workspace smaller than slab_sla_cuda_workspace_bytes(shape)";
    default: break;
  }
  if (status > SLAB_ERR_CUDA_BASE) return cudaGetErrorString(static_cast<cudaError_t>(status - SLAB_ERR_CUDA_BASE));
  return "unknown status";
}
