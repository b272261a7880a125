/* Shared by sla_abi_recorder.c (linked into the plugin under test) and trt_plugin_harness.cpp. */
#ifndef SLAB_TEST_SLA_ABI_RECORDER_H_
#define SLAB_TEST_SLA_ABI_RECORDER_H_

#include "sla_attention.h"

#define SLAB_TEST_FAILING_BATCH 13

typedef struct slab_test_call {
  int dtype;
  const void* q;
  const void* k;
  const void* v;
  slab_sla_shape shape;
  float eps;
  void* workspace;
  size_t workspace_bytes;
  void* stream;
} slab_test_call;

/* A made-up workspace size that depends on every dimension, so the harness sees which shape was asked about. */
static inline size_t slab_test_workspace_bytes(slab_sla_shape s) {
  return (size_t)(s.batch * 1000000 + s.tokens * 10000 + s.heads * 1000 + s.head_dim * 10 + s.value_dim);
}

#endif
