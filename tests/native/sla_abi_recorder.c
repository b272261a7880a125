/* Test double of the fused kernel's C ABI (sla_attention.h) for the TensorRT plugin harness: instead of computing,
   slab_sla_cuda_forward writes what it was called with into `out` (host memory in the harness), so the harness can
   check the arguments the plugin passes; batch == 13 makes it fail, to exercise the plugin's error path. */
#include <string.h>

#include "sla_attention.h"
#include "sla_abi_recorder.h"

size_t slab_sla_cuda_workspace_bytes(slab_sla_shape shape) { return slab_test_workspace_bytes(shape); }

int slab_sla_cuda_forward(slab_dtype dtype, const void* q, const void* k, const void* v, void* out,
                          slab_sla_shape shape, float eps, void* workspace, size_t workspace_bytes, void* stream) {
  if (shape.batch == SLAB_TEST_FAILING_BATCH) {
    return SLAB_ERR_WORKSPACE;
  }
  slab_test_call call;
  call.dtype = (int)dtype;
  call.q = q;
  call.k = k;
  call.v = v;
  call.shape = shape;
  call.eps = eps;
  call.workspace = workspace;
  call.workspace_bytes = workspace_bytes;
  call.stream = stream;
  memcpy(out, &call, sizeof(call));
  return SLAB_OK;
}

const char* slab_sla_status_string(int status) {
  return status == SLAB_ERR_WORKSPACE ? "workspace too small (recorder)" : "recorder status";
}
