// Fused simplified linear attention (SLA), inference: the C ABI shared by every build of the kernel.
//
// One CUDA source (sla_attention_cuda.cu) implements the GPU entry points below and is compiled into each
// library that needs them: the PyTorch CUDA path (loaded with ctypes), the ONNX Runtime CUDA custom op and
// the TensorRT plugin. The CPU kernel (ONNX Runtime CPU custom op) follows the same contract.
//
// Contract, for q and k [B, N, H, D] (after the ReLU feature map), v [B, N, H, Dv], out [B, N, H, Dv],
// all contiguous and of one dtype:
//     ksum[b, h]  = sum_n k[b, n, h, :]                                   [D]
//     kv[b, h]    = sum_n k[b, n, h, :]^T v[b, n, h, :]                   [D, Dv]
//     out[b, n, h, :] = (q[b, n, h, :] @ kv[b, h]) / (q[b, n, h, :] . ksum[b, h] + eps)
// with every sum and product accumulated in float32 whatever the I/O dtype.
#ifndef SLAB_SLA_ATTENTION_H_
#define SLAB_SLA_ATTENTION_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum slab_dtype { SLAB_FLOAT32 = 0, SLAB_FLOAT16 = 1, SLAB_BFLOAT16 = 2 } slab_dtype;

typedef struct slab_sla_shape {
  int64_t batch;      // B
  int64_t tokens;     // N
  int64_t heads;      // H
  int64_t head_dim;   // D  (q, k)
  int64_t value_dim;  // Dv (v, out)
} slab_sla_shape;

// Status codes returned by the entry points (0 = success; a CUDA error is returned as 1000 + cudaError_t).
enum {
  SLAB_OK = 0,
  SLAB_ERR_SHAPE = 1,       // a dimension < 1, or D / Dv above SLAB_SLA_MAX_DIM
  SLAB_ERR_DTYPE = 2,       // unknown slab_dtype
  SLAB_ERR_WORKSPACE = 3,   // workspace smaller than slab_sla_cuda_workspace_bytes(shape)
  SLAB_ERR_CUDA_BASE = 1000
};

// Largest head dim (D and Dv) the kernels support.
#define SLAB_SLA_MAX_DIM 128

// Bytes of device workspace slab_sla_cuda_forward needs for `shape`; a device-independent upper bound, so a
// TensorRT plugin can report it at build time for the profile's largest shape.
size_t slab_sla_cuda_workspace_bytes(slab_sla_shape shape);

// Enqueue the fused forward on `stream` (a cudaStream_t; NULL = the legacy default stream). Pointers are
// device pointers. Returns SLAB_OK or an error code above; never synchronises.
int slab_sla_cuda_forward(slab_dtype dtype, const void* q, const void* k, const void* v, void* out,
                          slab_sla_shape shape, float eps, void* workspace, size_t workspace_bytes,
                          void* stream);

// A one-line description of a status code (static storage).
const char* slab_sla_status_string(int status);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // SLAB_SLA_ATTENTION_H_
