// GPU check of libslab_trt_plugin.so without TensorRT (which cannot be installed in this workplace): create the
// plugin from its creator as the ONNX parser does, ask it for the workspace of the shape, and run its enqueue on a
// CUDA stream with device tensors, so the real fused kernel (sla_attention_cuda.cu, linked into the library) runs
// behind the plugin's interface. Every dtype the plugin accepts is checked against a float64 reference of
// sla_attention.h's contract.
//
//   trt_plugin_gpu_harness LIB    prints one line per case and "gpu harness: N cases, M failed"; exits 1 on a
//                                 failure
#include <NvInferRuntime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "plugin_library.h"

using namespace nvinfer1;

namespace {

struct Case {
  int64_t batch, tokens, heads, headDim, valueDim;
};

// Zoo shapes (SLAB-DeiT-T at 224 and 1024, SLAB-Swin-T stage 1 and 2, SLAB-PVT stage 1) and edges (one token,
// odd sizes, the 128 head-dim limit).
Case const kCases[] = {
    {4, 196, 3, 64, 64},  {1, 4096, 3, 64, 64}, {2, 3136, 3, 32, 32}, {2, 784, 6, 32, 32},
    {2, 3136, 1, 64, 64}, {3, 1, 2, 16, 16},    {2, 37, 5, 24, 40},   {1, 300, 2, 128, 128},
};

int gFailures = 0;

bool cudaOk(cudaError_t err, char const* what) {
  if (err != cudaSuccess) {
    std::printf("FAIL: %s: %s\n", what, cudaGetErrorString(err));
    ++gFailures;
    return false;
  }
  return true;
}

template <typename T>
T fromFloat(float x);
template <>
float fromFloat<float>(float x) { return x; }
template <>
__half fromFloat<__half>(float x) { return __float2half(x); }
template <>
__nv_bfloat16 fromFloat<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

float toFloat(float x) { return x; }
float toFloat(__half x) { return __half2float(x); }
float toFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

// out[b, n, h, :] = (q[b,n,h,:] @ sum_m k[b,m,h,:]^T v[b,m,h,:]) / (q[b,n,h,:] . sum_m k[b,m,h,:] + eps)
std::vector<double> reference(Case const& c, std::vector<float> const& q, std::vector<float> const& k,
                              std::vector<float> const& v, float eps) {
  std::vector<double> out(static_cast<size_t>(c.batch * c.tokens * c.heads * c.valueDim));
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int64_t h = 0; h < c.heads; ++h) {
      std::vector<double> ksum(c.headDim, 0.0), kv(c.headDim * c.valueDim, 0.0);
      for (int64_t n = 0; n < c.tokens; ++n) {
        size_t const kBase = ((b * c.tokens + n) * c.heads + h) * c.headDim;
        size_t const vBase = ((b * c.tokens + n) * c.heads + h) * c.valueDim;
        for (int64_t d = 0; d < c.headDim; ++d) {
          ksum[d] += k[kBase + d];
          for (int64_t e = 0; e < c.valueDim; ++e) kv[d * c.valueDim + e] += double(k[kBase + d]) * v[vBase + e];
        }
      }
      for (int64_t n = 0; n < c.tokens; ++n) {
        size_t const qBase = ((b * c.tokens + n) * c.heads + h) * c.headDim;
        size_t const oBase = ((b * c.tokens + n) * c.heads + h) * c.valueDim;
        double den = eps;
        for (int64_t d = 0; d < c.headDim; ++d) den += double(q[qBase + d]) * ksum[d];
        for (int64_t e = 0; e < c.valueDim; ++e) {
          double num = 0.0;
          for (int64_t d = 0; d < c.headDim; ++d) num += double(q[qBase + d]) * kv[d * c.valueDim + e];
          out[oBase + e] = num / den;
        }
      }
    }
  }
  return out;
}

Dims dims4(int64_t a, int64_t b, int64_t c, int64_t d) {
  Dims out{};
  out.nbDims = 4;
  out.d[0] = a, out.d[1] = b, out.d[2] = c, out.d[3] = d;
  return out;
}

template <typename T>
void runCase(IPluginCreatorV3One* creator, Case const& c, DataType type, char const* typeName, double rtol,
             cudaStream_t stream) {
  float const eps = 1e-6F;
  PluginField field("eps", &eps, PluginFieldType::kFLOAT32, 1);
  PluginFieldCollection fc{1, &field};
  IPluginV3* plugin = creator->createPlugin("gpu_case", &fc, TensorRTPhase::kBUILD);
  if (plugin == nullptr) {
    std::printf("FAIL: createPlugin\n");
    ++gFailures;
    return;
  }
  auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
  auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));

  // q, k after ReLU (non-negative), v of either sign, as the SLA layer feeds them.
  std::mt19937 rng(static_cast<uint32_t>(c.tokens * 131 + c.headDim));
  std::uniform_real_distribution<float> positive(0.0F, 1.0F);
  std::normal_distribution<float> normal(0.0F, 1.0F);
  size_t const qkCount = static_cast<size_t>(c.batch * c.tokens * c.heads * c.headDim);
  size_t const vCount = static_cast<size_t>(c.batch * c.tokens * c.heads * c.valueDim);
  std::vector<float> q(qkCount), k(qkCount), v(vCount);
  std::vector<T> qT(qkCount), kT(qkCount), vT(vCount), outT(vCount);
  for (size_t i = 0; i < qkCount; ++i) {
    qT[i] = fromFloat<T>(positive(rng)), kT[i] = fromFloat<T>(positive(rng));
    q[i] = toFloat(qT[i]), k[i] = toFloat(kT[i]);  // the reference sees the rounded inputs
  }
  for (size_t i = 0; i < vCount; ++i) {
    vT[i] = fromFloat<T>(normal(rng));
    v[i] = toFloat(vT[i]);
  }

  Dims const qDims = dims4(c.batch, c.tokens, c.heads, c.headDim), vDims = dims4(c.batch, c.tokens, c.heads, c.valueDim);
  DynamicPluginTensorDesc dyn[4]{};
  for (int i = 0; i < 4; ++i) {
    Dims const d = i < 2 ? qDims : vDims;
    dyn[i].desc.dims = d, dyn[i].desc.type = type, dyn[i].desc.format = TensorFormat::kLINEAR;
    dyn[i].min = d, dyn[i].opt = d, dyn[i].max = d;
  }
  size_t const workspaceBytes = build->getWorkspaceSize(dyn, 3, dyn + 3, 1);
  PluginTensorDesc in[3], out[1];
  for (int i = 0; i < 3; ++i) in[i] = dyn[i].desc;
  out[0] = dyn[3].desc;

  void *dq = nullptr, *dk = nullptr, *dv = nullptr, *dout = nullptr, *dws = nullptr;
  bool ok = cudaOk(cudaMalloc(&dq, qkCount * sizeof(T)), "cudaMalloc q") &&
            cudaOk(cudaMalloc(&dk, qkCount * sizeof(T)), "cudaMalloc k") &&
            cudaOk(cudaMalloc(&dv, vCount * sizeof(T)), "cudaMalloc v") &&
            cudaOk(cudaMalloc(&dout, vCount * sizeof(T)), "cudaMalloc out") &&
            (workspaceBytes == 0 || cudaOk(cudaMalloc(&dws, workspaceBytes), "cudaMalloc workspace"));
  ok = ok && cudaOk(cudaMemcpy(dq, qT.data(), qkCount * sizeof(T), cudaMemcpyHostToDevice), "copy q") &&
       cudaOk(cudaMemcpy(dk, kT.data(), qkCount * sizeof(T), cudaMemcpyHostToDevice), "copy k") &&
       cudaOk(cudaMemcpy(dv, vT.data(), vCount * sizeof(T), cudaMemcpyHostToDevice), "copy v") &&
       cudaOk(cudaMemset(dout, 0xFF, vCount * sizeof(T)), "poison out");  // NaN where nothing is written
  if (ok) {
    void const* inputs[3] = {dq, dk, dv};
    void* outputs[1] = {dout};
    int32_t const status = runtime->onShapeChange(in, 3, out, 1) == 0
                               ? runtime->enqueue(in, out, inputs, outputs, dws, stream)
                               : -1;
    ok = status == 0 && cudaOk(cudaStreamSynchronize(stream), "kernel") &&
         cudaOk(cudaMemcpy(outT.data(), dout, vCount * sizeof(T), cudaMemcpyDeviceToHost), "copy out");
    if (status != 0) {
      std::printf("FAIL: enqueue returned %d\n", status);
      ++gFailures;
    }
  }
  if (ok) {
    std::vector<double> const ref = reference(c, q, k, v, eps);
    double maxRef = 0.0, maxErr = 0.0;
    bool finite = true;
    for (size_t i = 0; i < vCount; ++i) {
      double const got = toFloat(outT[i]);
      finite = finite && std::isfinite(got);
      maxRef = std::fmax(maxRef, std::fabs(ref[i]));
      maxErr = std::fmax(maxErr, std::fabs(got - ref[i]));
    }
    bool const pass = finite && maxErr <= rtol * maxRef;
    std::printf("%s %s B%lld-N%lld-H%lld-D%lld-Dv%lld: max |err| %.3g vs %.3g x max |ref| %.3g, workspace %zu\n",
                pass ? "ok  " : "FAIL:", typeName, (long long)c.batch, (long long)c.tokens, (long long)c.heads,
                (long long)c.headDim, (long long)c.valueDim, maxErr, rtol, maxRef, workspaceBytes);
    gFailures += pass ? 0 : 1;
  }
  for (void* p : {dq, dk, dv, dout, dws}) cudaFree(p);
  delete plugin;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::printf("usage: %s LIB\n", argv[0]);
    return 2;
  }
  PluginLibrary library;
  if (!openPluginLibrary(argv[1], &library)) return 1;
  int32_t nb = 0;
  auto* creator = static_cast<IPluginCreatorV3One*>(library.getCreators(nb)[0]);
  cudaStream_t stream = nullptr;
  if (!cudaOk(cudaStreamCreate(&stream), "cudaStreamCreate")) return 1;
  int cases = 0;
  for (Case const& c : kCases) {
    // Output rounding bounds the error: fp32 ~1e-7, fp16 2^-11, bf16 2^-8 of the magnitude (plus accumulation).
    runCase<float>(creator, c, DataType::kFLOAT, "fp32", 1e-4, stream);
    runCase<__half>(creator, c, DataType::kHALF, "fp16", 2e-3, stream);
    runCase<__nv_bfloat16>(creator, c, DataType::kBF16, "bf16", 1.6e-2, stream);
    cases += 3;
  }
  cudaStreamDestroy(stream);
  std::printf("gpu harness: %d cases, %d failed\n", cases, gFailures);
  return gFailures == 0 ? 0 : 1;
}
