// A CPU emulation of the CUDA subset slab_edge/native/csrc/sla_attention_cuda.cu uses, so that CI (no GPU)
// runs the kernels' tiling, padding, chunking and reduction logic. Test infrastructure only.
//
// Compile the .cu as C++ with this header forced in (`g++ -x c++ -include cuda_host_emulation.h
// -fno-strict-aliasing ...`: the kernels move 16-bit data as uint4 vectors).
// What it models:
// * blocks run one after another; the threads of a block are user-level contexts (ucontext) that switch only at
//   __syncthreads. The order threads run in between barriers is forward, reverse or shuffled
//   (slab_emu_set_schedule): a missing barrier shows up as results that depend on the order.
// * dynamic shared memory is filled with 0xFF bytes (NaN in fp32, fp16 and bf16) before each block, so reading
//   what no thread wrote turns the output into NaN.
// * WMMA fragments hold the whole 16x16 (or 16x8) tile in every lane; load / store / mma check the API's
//   rules (32-byte aligned pointers, ldm a multiple of 16 bytes). TF32 inputs are truncated to 10 mantissa bits
//   as the tensor cores do with bits beyond TF32, so a missed hi / lo split loses accuracy here too.
// * 16-byte vector accesses are checked for alignment (SLAB_CHECK_ALIGNED).
// It does not model warp divergence, memory ordering between blocks, bank conflicts or real timing.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#define SLAB_SLA_HOST_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) alignas(n)

using std::isfinite;

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
// Not alignas(16): a misaligned vector access is reported by SLAB_CHECK_ALIGNED instead of crashing the host.
struct uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
using cudaStream_t = void*;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

// ------------------------------------------------------------------------------------------ 16-bit floats
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, 2);
  return static_cast<float>(f);
}
inline __half __float2half_rn(float x) {
  const _Float16 f = static_cast<_Float16>(x);  // round to nearest even, overflow to inf
  __half h;
  std::memcpy(&h.bits, &f, 2);
  return h;
}
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t u = static_cast<uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return __nv_bfloat16{static_cast<uint16_t>(u >> 16)};
}

// ------------------------------------------------------------------------------------------ the emulator
namespace emu {

struct Thread {
  ucontext_t context;
  bool done = false;
};

struct Block {
  dim3 block_idx, block_dim, grid_dim;
  unsigned char* smem = nullptr;
  std::vector<Thread> threads;
  ucontext_t scheduler;
  unsigned current = 0;
  std::function<void()> body;
};

// One warp-level MMA as the first lane of a warp ran it: operands (bytes) and result. The other lanes must issue
// the same operands (WMMA is warp-collective); they get the result without recomputing it.
struct MmaRecord {
  std::vector<unsigned char> operands;
  std::vector<float> result;
};

struct State {
  Block* block = nullptr;
  int schedule = 0;  // 0 forward, 1 reverse, 2 shuffled every round
  uint64_t seed = 1;
  size_t max_smem = 0;
  int launches = 0;
  std::string error;
  std::vector<std::unique_ptr<char[]>> stacks;  // one per thread, kept across launches
  std::vector<std::vector<MmaRecord>> mma_log;   // per warp, this block's MMAs in order
  std::vector<size_t> mma_count;                 // per thread, MMAs issued in this block
};

inline State& state() {
  static State s;
  return s;
}

inline void fail(const std::string& message) {
  if (state().error.empty()) state().error = message;
}

inline void check_aligned(const void* p, size_t bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % bytes != 0) fail(std::string(what) + ": pointer not aligned to " + std::to_string(bytes) + " bytes");
}

inline dim3 thread_index() { return dim3(state().block->current); }
inline unsigned char* dynamic_smem() { return state().block->smem; }

inline void syncthreads() {
  Block* b = state().block;
  swapcontext(&b->threads[b->current].context, &b->scheduler);
}

inline void thread_entry() {
  Block* b = state().block;
  b->body();
  b->threads[b->current].done = true;  // returns to uc_link, the scheduler
}

constexpr size_t kStackBytes = 256 * 1024;

inline void start_thread(Thread& t, char* stack, ucontext_t* scheduler) {
  t.done = false;
  getcontext(&t.context);
  t.context.uc_stack.ss_sp = stack;
  t.context.uc_stack.ss_size = kStackBytes;
  t.context.uc_link = scheduler;
  makecontext(&t.context, thread_entry, 0);
}

inline void run_block(Block& b, std::mt19937_64& rng) {
  const unsigned n = b.block_dim.x;
  for (unsigned i = 0; i < n; ++i) start_thread(b.threads[i], state().stacks[i].get(), &b.scheduler);
  std::vector<unsigned> order(n);
  std::iota(order.begin(), order.end(), 0u);
  if (state().schedule == 1) std::reverse(order.begin(), order.end());
  for (;;) {
    if (state().schedule == 2) std::shuffle(order.begin(), order.end(), rng);
    for (unsigned i : order) {
      if (b.threads[i].done) continue;
      b.current = i;
      swapcontext(&b.scheduler, &b.threads[i].context);
    }
    unsigned done = 0;
    for (const Thread& t : b.threads) done += t.done;
    if (done == n) return;
    if (done > 0) {
      fail("barrier divergence: some threads returned while others wait at __syncthreads");
      return;
    }
  }
}

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes, Args... args) {
  State& s = state();
  ++s.launches;
  s.max_smem = std::max(s.max_smem, smem_bytes);
  if (block.y != 1 || block.z != 1) {
    fail("emulated blocks are one-dimensional");
    return;
  }
  Block b;
  b.grid_dim = grid;
  b.block_dim = block;
  b.threads.resize(block.x);
  while (s.stacks.size() < block.x) s.stacks.emplace_back(new char[kStackBytes]);
  std::vector<unsigned char> storage(smem_bytes + 128);
  b.smem = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(storage.data()) + 127) / 128 * 128);
  b.body = [&] { kernel(args...); };
  std::mt19937_64 rng(s.seed);
  s.block = &b;
  for (unsigned z = 0; z < grid.z && s.error.empty(); ++z)
    for (unsigned y = 0; y < grid.y && s.error.empty(); ++y)
      for (unsigned x = 0; x < grid.x && s.error.empty(); ++x) {
        b.block_idx = dim3(x, y, z);
        std::memset(b.smem, 0xff, smem_bytes);
        s.mma_log.assign((block.x + 31) / 32, {});
        s.mma_count.assign(block.x, 0);
        run_block(b, rng);
      }
  s.block = nullptr;
}

}  // namespace emu

#define threadIdx (::emu::thread_index())
#define blockIdx (::emu::state().block->block_idx)
#define blockDim (::emu::state().block->block_dim)
#define gridDim (::emu::state().block->grid_dim)
#define SLAB_CHECK_ALIGNED(pointer, bytes) ::emu::check_aligned(pointer, bytes, "16-byte vector access")

inline void __syncthreads() { ::emu::syncthreads(); }

inline cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }
inline cudaError_t cudaGetLastError() { return ::emu::state().error.empty() ? cudaSuccess : 1; }
inline const char* cudaGetErrorString(cudaError_t) { return ::emu::state().error.c_str(); }

// ------------------------------------------------------------------------------------------ WMMA
namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
template <typename T>
struct element {
  using type = T;
};
template <>
struct element<precision::tf32> {
  using type = float;
};
template <typename Use, int M, int N, int K>
struct extent;
template <int M, int N, int K>
struct extent<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct extent<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct extent<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};
inline float value(float x) { return x; }
inline float value(__half x) { return __half2float(x); }
inline float value(__nv_bfloat16 x) { return __bfloat162float(x); }
// The tensor cores read only the TF32 bits of an fp32 input.
inline float tf32_value(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u &= 0xffffe000u;
  std::memcpy(&x, &u, 4);
  return x;
}
template <typename E>
void check(const E* p, unsigned ldm, const char* what) {
  ::emu::check_aligned(p, 32, what);
  if ((ldm * sizeof(E)) % 16 != 0) ::emu::fail(std::string(what) + ": ldm is not a multiple of 16 bytes");
}
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  using element_type = typename detail::element<T>::type;
  static constexpr int rows = detail::extent<Use, M, N, K>::rows;
  static constexpr int cols = detail::extent<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  element_type x[num_elements];
};

template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f,
                      const typename fragment<Use, M, N, K, T, Layout>::element_type* p, unsigned ldm) {
  detail::check(p, ldm, "load_matrix_sync");
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = std::is_same<Layout, row_major>::value ? p[r * ldm + c] : p[c * ldm + r];
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  detail::check(p, ldm, "store_matrix_sync");
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * N + c];
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f,
                   const typename fragment<Use, M, N, K, T, Layout>::element_type& v) {
  for (auto& e : f.x) e = v;
}

template <int M, int N, int K, typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
              const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  ::emu::State& st = ::emu::state();
  const unsigned lane = st.block->current;
  std::vector<::emu::MmaRecord>& log = st.mma_log[lane / 32];
  const size_t index = st.mma_count[lane]++;
  std::vector<unsigned char> operands(sizeof(a.x) + sizeof(b.x) + sizeof(c.x));
  std::memcpy(operands.data(), a.x, sizeof(a.x));
  std::memcpy(operands.data() + sizeof(a.x), b.x, sizeof(b.x));
  std::memcpy(operands.data() + sizeof(a.x) + sizeof(b.x), c.x, sizeof(c.x));
  if (index < log.size()) {
    if (log[index].operands != operands) ::emu::fail("mma_sync: the lanes of a warp issued different operands");
    std::memcpy(d.x, log[index].result.data(), sizeof(d.x));
    return;
  }
  float av[M * K], bt[N * K], out[M * N];  // b transposed: both operands walk k contiguously
  for (int i = 0; i < M * K; ++i) {
    if constexpr (std::is_same<T, precision::tf32>::value) av[i] = detail::tf32_value(a.x[i]);
    else av[i] = detail::value(a.x[i]);
  }
  for (int k = 0; k < K; ++k)
    for (int j = 0; j < N; ++j) {
      if constexpr (std::is_same<T, precision::tf32>::value) bt[j * K + k] = detail::tf32_value(b.x[k * N + j]);
      else bt[j * K + k] = detail::value(b.x[k * N + j]);
    }
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.x[i * N + j];
      for (int k = 0; k < K; ++k) s = std::fma(av[i * K + k], bt[j * K + k], s);
      out[i * N + j] = s;
    }
  log.push_back({std::move(operands), std::vector<float>(out, out + M * N)});
  std::memcpy(d.x, out, sizeof(out));
}

// cvt.rna.tf32.f32: round to nearest, ties away from zero, to 10 mantissa bits
inline float __float_to_tf32(float x) {
  if (!std::isfinite(x)) return x;
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&x, &u, 4);
  return x;
}

}  // namespace wmma
}  // namespace nvcuda

// ------------------------------------------------------------------------------------------ test hooks
extern "C" {
__attribute__((visibility("default"))) void slab_emu_reset(int schedule, unsigned long long seed) {
  ::emu::State& s = ::emu::state();
  s.schedule = schedule;
  s.seed = seed;
  s.max_smem = 0;
  s.launches = 0;
  s.error.clear();
}
__attribute__((visibility("default"))) const char* slab_emu_error() { return ::emu::state().error.c_str(); }
__attribute__((visibility("default"))) unsigned long long slab_emu_max_smem() { return ::emu::state().max_smem; }
__attribute__((visibility("default"))) int slab_emu_launches() { return ::emu::state().launches; }
}
