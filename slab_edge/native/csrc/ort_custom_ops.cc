// ONNX Runtime custom-op library of slab-edge: the fused SLA node SlabLinearAttention (domain "slab").
//
//   inputs   q, k [B, N, H, D] (after the ReLU feature map), v [B, N, H, Dv]; one dtype: float, float16 or
//            bfloat16
//   output   [B, N, H, Dv] of the same dtype
//   attrs    eps (float, default 1e-6); plugin_version / plugin_namespace are TensorRT's and are ignored
//
// Kernels: CPUExecutionProvider (sla_attention_cpu.h on ORT's intra-op thread pool) and, built with
// -DSLAB_WITH_CUDA, CUDAExecutionProvider (slab_sla_cuda_forward of sla_attention.h on the EP's compute
// stream, workspace from the EP's allocator). One OrtCustomOp per (dtype, EP): ORT builds one schema per op
// name from all of them (input types = the union) and picks the kernel whose types match the node.
//
// Built against the headers of one ORT release (ORT_API_VERSION), the library asks the runtime for exactly
// that API version: newer runtimes serve it, older ones fail RegisterCustomOps with a one-line status.
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#include "sla_attention.h"
#include "sla_attention_cpu.h"

#define SLAB_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

constexpr const char* kDomain = "slab";
constexpr const char* kOpName = "SlabLinearAttention";
constexpr float kDefaultEps = 1e-6f;

const OrtApi* g_api = nullptr;

OrtStatus* make_status(OrtErrorCode code, const std::string& message) {
  return g_api->CreateStatus(code, (std::string(kOpName) + ": " + message).c_str());
}

std::string shape_text(const std::vector<int64_t>& dims) {
  std::string text = "[";
  for (size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
  return text + "]";
}

constexpr slab_dtype to_slab_dtype(ONNXTensorElementDataType type) {
  return type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16    ? SLAB_FLOAT16
         : type == ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16 ? SLAB_BFLOAT16
                                                          : SLAB_FLOAT32;
}

// The node's inputs checked against the contract; on success `shape` is filled.
OrtStatus* read_inputs(const Ort::ConstValue (&in)[3], slab_sla_shape& shape) {
  std::vector<int64_t> dims[3];
  const char* names[3] = {"q", "k", "v"};
  for (int i = 0; i < 3; ++i) {
    if (!in[i].IsTensor()) return make_status(ORT_INVALID_ARGUMENT, std::string(names[i]) + " is not a tensor");
    dims[i] = in[i].GetTensorTypeAndShapeInfo().GetShape();
    if (dims[i].size() != 4) {
      return make_status(ORT_INVALID_ARGUMENT, std::string(names[i]) + " must be [B, N, H, D], got rank " +
                                                   std::to_string(dims[i].size()) + " " + shape_text(dims[i]));
    }
  }
  if (dims[1] != dims[0]) {
    return make_status(ORT_INVALID_ARGUMENT,
                       "q " + shape_text(dims[0]) + " and k " + shape_text(dims[1]) + " must have the same shape");
  }
  if (dims[2][0] != dims[0][0] || dims[2][1] != dims[0][1] || dims[2][2] != dims[0][2]) {
    return make_status(ORT_INVALID_ARGUMENT, "v " + shape_text(dims[2]) + " must match q " + shape_text(dims[0]) +
                                                 " in B, N and H");
  }
  shape = {dims[0][0], dims[0][1], dims[0][2], dims[0][3], dims[2][3]};
  if (shape.head_dim < 1 || shape.value_dim < 1 || shape.head_dim > SLAB_SLA_MAX_DIM ||
      shape.value_dim > SLAB_SLA_MAX_DIM) {
    return make_status(ORT_INVALID_ARGUMENT, "head dims D = " + std::to_string(shape.head_dim) + ", Dv = " +
                                                 std::to_string(shape.value_dim) + " must be in [1, " +
                                                 std::to_string(SLAB_SLA_MAX_DIM) + "]");
  }
  return nullptr;
}

bool is_empty(const slab_sla_shape& s) { return s.batch == 0 || s.tokens == 0 || s.heads == 0; }

// Runs `body` and turns an Ort::Exception (thrown by the C++ API wrappers) into a status.
template <typename Body>
OrtStatus* guarded(Body&& body) {
  try {
    return body();
  } catch (const Ort::Exception& err) {
    return make_status(err.GetOrtErrorCode(), err.what());
  } catch (const std::exception& err) {
    return make_status(ORT_FAIL, err.what());
  }
}

// The node's checked inputs and its allocated output, for one execution.
struct NodeIO {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  slab_sla_shape shape;
  slab_dtype dtype;
  const OrtMemoryInfo* memory;  // where the inputs live
};

// One kernel per execution provider: reads eps, checks the inputs, allocates the output, then
// Device::run(ctx, io, eps) computes it.
template <typename Device>
struct SlaKernel {
  float eps = kDefaultEps;

  explicit SlaKernel(const OrtKernelInfo* info) {
    float value = 0.0f;
    // a missing attribute keeps the default (the ONNX function body has the same default)
    OrtStatus* status = g_api->KernelInfoGetAttribute_float(info, "eps", &value);
    if (status == nullptr) {
      eps = value;
    } else {
      g_api->ReleaseStatus(status);
    }
  }

  OrtStatus* ComputeV2(OrtKernelContext* context) const {
    return guarded([&]() -> OrtStatus* {
      Ort::KernelContext ctx(context);
      const Ort::ConstValue in[3] = {ctx.GetInput(0), ctx.GetInput(1), ctx.GetInput(2)};
      slab_sla_shape s;
      if (OrtStatus* bad = read_inputs(in, s)) return bad;
      auto out = ctx.GetOutput(0, {s.batch, s.tokens, s.heads, s.value_dim});
      if (is_empty(s)) return nullptr;
      const NodeIO io{in[0].GetTensorRawData(),
                      in[1].GetTensorRawData(),
                      in[2].GetTensorRawData(),
                      out.GetTensorMutableRawData(),
                      s,
                      to_slab_dtype(in[0].GetTensorTypeAndShapeInfo().GetElementType()),
                      in[0].GetTensorMemoryInfo()};
      return Device::run(ctx, io, eps);
    });
  }
};

struct Cpu {
  static OrtStatus* run(const Ort::KernelContext& ctx, const NodeIO& io, float eps) {
    std::vector<float> workspace(slab_cpu::workspace_bytes(io.shape) / sizeof(float));
    auto parallel_for = [&ctx](size_t count, const auto& task) {
      using Task = std::decay_t<decltype(task)>;
      ctx.ParallelFor([](void* data, size_t i) { (*static_cast<const Task*>(data))(i); }, count, 0,
                      const_cast<Task*>(&task));
    };
    const int status = slab_cpu::forward(io.dtype, io.q, io.k, io.v, io.out, io.shape, eps, workspace.data(),
                                         workspace.size() * sizeof(float), parallel_for);
    // read_inputs checked everything forward checks: a failure here is a bug, reported by number
    if (status != SLAB_OK) return make_status(ORT_FAIL, "CPU kernel failed with status " + std::to_string(status));
    return nullptr;
  }
};

#ifdef SLAB_WITH_CUDA
struct Cuda {
  static OrtStatus* run(const Ort::KernelContext& ctx, const NodeIO& io, float eps) {
    const size_t bytes = slab_sla_cuda_workspace_bytes(io.shape);
    // The workspace comes from the allocator of the device the inputs live on (the EP's, stream-ordered)
    // and goes back right after the launch: every CUDA kernel of the session runs on this one compute
    // stream, so a later user of the block is ordered after this kernel.
    OrtAllocator* allocator = ctx.GetAllocator(*io.memory);
    void* workspace = bytes ? allocator->Alloc(allocator, bytes) : nullptr;
    if (bytes && workspace == nullptr) {
      g_api->ReleaseAllocator(allocator);
      return make_status(ORT_FAIL, "could not allocate " + std::to_string(bytes) + " bytes of CUDA workspace");
    }
    const int status = slab_sla_cuda_forward(io.dtype, io.q, io.k, io.v, io.out, io.shape, eps, workspace, bytes,
                                             ctx.GetGPUComputeStream());
    if (workspace) allocator->Free(allocator, workspace);
    g_api->ReleaseAllocator(allocator);
    if (status != SLAB_OK) return make_status(ORT_FAIL, slab_sla_status_string(status));
    return nullptr;
  }
};
#endif

template <typename Kernel, ONNXTensorElementDataType Type, bool OnCuda>
struct SlaOp : Ort::CustomOpBase<SlaOp<Kernel, Type, OnCuda>, Kernel, true> {
  OrtStatus* CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return guarded([&]() -> OrtStatus* {
      *kernel = new Kernel(info);
      return nullptr;
    });
  }
  const char* GetName() const { return kOpName; }
  const char* GetExecutionProviderType() const { return OnCuda ? "CUDAExecutionProvider" : nullptr; }
  size_t GetInputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetInputType(size_t /*index*/) const { return Type; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return Type; }
};

using CpuFloat = SlaOp<SlaKernel<Cpu>, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, false>;
using CpuHalf = SlaOp<SlaKernel<Cpu>, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, false>;
using CpuBFloat = SlaOp<SlaKernel<Cpu>, ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16, false>;
#ifdef SLAB_WITH_CUDA
using CudaFloat = SlaOp<SlaKernel<Cuda>, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, true>;
using CudaHalf = SlaOp<SlaKernel<Cuda>, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, true>;
using CudaBFloat = SlaOp<SlaKernel<Cuda>, ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16, true>;
#endif

// The ops live as long as the library (sessions keep pointers to them); each registration adds one domain.
std::mutex g_domains_mutex;
std::vector<Ort::CustomOpDomain>& domains() {
  static std::vector<Ort::CustomOpDomain> all;
  return all;
}

}  // namespace

SLAB_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // API version 1 is served by every runtime: enough to say why.
    char message[256];
    std::snprintf(message, sizeof message,
                  "the slab custom-op library was built for ONNX Runtime API %d (onnxruntime >= 1.%d); this "
                  "runtime is %s",
                  ORT_API_VERSION, ORT_API_VERSION, api_base->GetVersionString());
    return api_base->GetApi(1)->CreateStatus(ORT_FAIL, message);
  }
  g_api = api;
  Ort::InitApi(api);
  static const CpuFloat cpu_float;
  static const CpuHalf cpu_half;
  static const CpuBFloat cpu_bfloat;
#ifdef SLAB_WITH_CUDA
  static const CudaFloat cuda_float;
  static const CudaHalf cuda_half;
  static const CudaBFloat cuda_bfloat;
#endif
  return guarded([&]() -> OrtStatus* {
    Ort::CustomOpDomain domain(kDomain);
    domain.Add(&cpu_float);
    domain.Add(&cpu_half);
    domain.Add(&cpu_bfloat);
#ifdef SLAB_WITH_CUDA
    domain.Add(&cuda_float);
    domain.Add(&cuda_half);
    domain.Add(&cuda_bfloat);
#endif
    Ort::UnownedSessionOptions(options).Add(domain);
    std::lock_guard<std::mutex> lock(g_domains_mutex);
    domains().push_back(std::move(domain));
    return nullptr;
  });
}
