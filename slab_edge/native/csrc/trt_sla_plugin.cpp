// TensorRT plugin "SlabLinearAttention" (version "1", namespace "slab"): the fused SLA core of
// sla_attention.h as one TensorRT layer, written to the IPluginV3 interfaces (TensorRT 10.0+ and 11.x; V2 plugin
// interfaces are deprecated). Only interfaces that exist since TensorRT 10.0 are used, so the same source builds
// against JetPack 6's TensorRT 10.3 and against newer headers.
//
//   inputs   q, k [B, N, H, D] (after the ReLU feature map), v [B, N, H, Dv]; one type for all (float, half,
//            bf16), linear format, dynamic shapes
//   output   [B, N, H, Dv] of the input type
//   field    eps (float32): the normalizer's epsilon; the ONNX parser passes the node attribute of that name, and
//            the engine keeps it through getFieldsToSerialize
//
// The library exports the two C entry points TensorRT's IPluginRegistry::loadLibrary (trtexec --dynamicPlugins,
// Python IPluginRegistry.load_library, plugins serialised into version-compatible plans) looks up for IPluginV3
// creators: setLoggerFinder and getCreators. It calls no TensorRT function and needs no libnvinfer at link or load
// time: every TensorRT object it receives is used through its virtual interface. There is deliberately no static
// registration (REGISTER_TENSORRT_PLUGIN): that would call libnvinfer's getPluginRegistry() when the library is
// loaded, tying it to one libnvinfer and making loadLibrary fail with "already registered".
#include <NvInferRuntime.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <new>
#include <string>

#include "sla_attention.h"

#define SLAB_TRT_EXPORT __attribute__((visibility("default")))

namespace slab_trt {
namespace {

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::ErrorCode;
using nvinfer1::IErrorRecorder;
using nvinfer1::ILogger;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;

constexpr char kPluginName[] = "SlabLinearAttention";
constexpr char kPluginVersion[] = "1";
constexpr char kPluginNamespace[] = "slab";
constexpr char kEpsField[] = "eps";
constexpr float kDefaultEps = 1e-6F;  // SLA's epsilon (slab_edge.ops.sla.SLA_EPS) when the node carries none
constexpr int32_t kNbInputs = 3;      // q, k, v
constexpr int32_t kRank = 4;          // [B, N, H, D]

// Set by TensorRT when it loads the library; findLogger() returns the logger of the builder or runtime that is
// calling the plugin (on the calling thread).
std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};

void logMessage(ILogger::Severity severity, char const* message) noexcept {
  nvinfer1::ILoggerFinder* finder = gLoggerFinder.load();
  ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
  if (logger != nullptr) {
    logger->log(severity, message);
  } else if (severity <= ILogger::Severity::kERROR) {
    std::fprintf(stderr, "%s\n", message);  // no logger handed over (library used outside loadLibrary)
  }
}

// One error path for every check: the execution context's error recorder when attached, and the logger.
void reportError(IErrorRecorder* recorder, ErrorCode code, std::string const& detail) noexcept {
  try {
    std::string const message = std::string(kPluginNamespace) + "::" + kPluginName + ": " + detail;
    if (recorder != nullptr) {
      recorder->reportError(code, message.c_str());
    }
    logMessage(ILogger::Severity::kERROR, message.c_str());
  } catch (...) {
    logMessage(ILogger::Severity::kERROR, "slab::SlabLinearAttention: error (out of memory formatting it)");
  }
}

bool supportedType(DataType type) {
  return type == DataType::kFLOAT || type == DataType::kHALF || type == DataType::kBF16;
}

bool toSlabDtype(DataType type, slab_dtype* out) {
  switch (type) {
    case DataType::kFLOAT: *out = SLAB_FLOAT32; return true;
    case DataType::kHALF: *out = SLAB_FLOAT16; return true;
    case DataType::kBF16: *out = SLAB_BFLOAT16; return true;
    default: return false;
  }
}

std::string dimsString(Dims const& dims) {
  std::string text = "[";
  for (int32_t i = 0; i < dims.nbDims; ++i) {
    text += (i ? ", " : "") + std::to_string(dims.d[i]);
  }
  return text + "]";
}

// Checks q [B, N, H, D], k [B, N, H, D], v [B, N, H, Dv] (a dimension of -1 is unknown and passes) and returns
// "" or what is wrong. D, Dv > SLAB_SLA_MAX_DIM is refused: the kernels hold a head in registers.
std::string checkShapes(Dims const& q, Dims const& k, Dims const& v) {
  if (q.nbDims != kRank || k.nbDims != kRank || v.nbDims != kRank) {
    return "q, k and v must be 4-D [B, N, H, D]; got q " + dimsString(q) + ", k " + dimsString(k) + ", v " +
           dimsString(v);
  }
  auto differ = [](int64_t a, int64_t b) { return a >= 0 && b >= 0 && a != b; };
  for (int32_t axis = 0; axis < kRank; ++axis) {
    bool const mismatch = differ(q.d[axis], k.d[axis]) || (axis < 3 && differ(q.d[axis], v.d[axis]));
    if (mismatch) {
      return "q " + dimsString(q) + ", k " + dimsString(k) + " and v " + dimsString(v) +
             " must agree in B, N, H (and q, k in D)";
    }
  }
  if (q.d[3] > SLAB_SLA_MAX_DIM || v.d[3] > SLAB_SLA_MAX_DIM) {
    return "head dims D = " + std::to_string(q.d[3]) + ", Dv = " + std::to_string(v.d[3]) +
           " exceed the kernel's limit of " + std::to_string(SLAB_SLA_MAX_DIM);
  }
  return "";
}

slab_sla_shape toShape(Dims const& q, Dims const& v) {
  return slab_sla_shape{q.d[0], q.d[1], q.d[2], q.d[3], v.d[3]};
}

class SlaPlugin final : public nvinfer1::IPluginV3,
                        public nvinfer1::IPluginV3OneCore,
                        public nvinfer1::IPluginV3OneBuild,
                        public nvinfer1::IPluginV3OneRuntime {
 public:
  explicit SlaPlugin(float eps, IErrorRecorder* recorder = nullptr) : mEps(eps), mRecorder(recorder) {
    describe();
  }
  SlaPlugin(SlaPlugin const&) = delete;
  SlaPlugin& operator=(SlaPlugin const&) = delete;
  ~SlaPlugin() override = default;

  // -- IPluginV3 ---------------------------------------------------------------------------------------------
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override {
    switch (type) {
      case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
      case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
      case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }

  nvinfer1::IPluginV3* clone() noexcept override { return new (std::nothrow) SlaPlugin(mEps, mRecorder); }

  // -- IPluginV3OneCore --------------------------------------------------------------------------------------
  char const* getPluginName() const noexcept override { return kPluginName; }
  char const* getPluginVersion() const noexcept override { return kPluginVersion; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

  // -- IPluginV3OneBuild -------------------------------------------------------------------------------------
  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override {
    if (nbInputs != kNbInputs || nbOutputs != 1) {
      return fail(ErrorCode::kINVALID_ARGUMENT, "expects 3 inputs (q, k, v) and 1 output, got " +
                                                    std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
    }
    // The profile's largest shapes bound every shape the engine will see.
    std::string problem = checkShapes(in[0].max, in[1].max, in[2].max);
    if (problem.empty()) {
      problem = checkShapes(in[0].desc.dims, in[1].desc.dims, in[2].desc.dims);
    }
    if (problem.empty() && out[0].desc.dims.nbDims != kRank) {
      problem = "output must be 4-D, got " + dimsString(out[0].desc.dims);
    }
    return problem.empty() ? 0 : fail(ErrorCode::kINVALID_ARGUMENT, problem);
  }

  int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override {
    if (nbInputs != kNbInputs || nbOutputs != 1) {
      return 1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
  }

  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                          int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept override {
    if (nbInputs != kNbInputs || nbOutputs != 1) {
      return fail(ErrorCode::kINVALID_ARGUMENT, "expects 3 inputs (q, k, v) and 1 output");
    }
    for (int32_t i = 0; i < kNbInputs; ++i) {
      if (inputs[i].nbDims != kRank) {
        return fail(ErrorCode::kINVALID_ARGUMENT,
                    "input " + std::to_string(i) + " has rank " + std::to_string(inputs[i].nbDims) +
                        "; q, k, v must be [B, N, H, D]");
      }
    }
    outputs[0].nbDims = kRank;  // [B, N, H] of q, Dv of v
    for (int32_t axis = 0; axis < 3; ++axis) {
      outputs[0].d[axis] = inputs[0].d[axis];
    }
    outputs[0].d[3] = inputs[2].d[3];
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t /*nbInputs*/,
                                 int32_t /*nbOutputs*/) noexcept override {
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != nvinfer1::TensorFormat::kLINEAR || !supportedType(desc.type)) {
      return false;
    }
    return pos == 0 || desc.type == inOut[0].desc.type;  // all inputs and the output share q's type
  }

  int32_t getNbOutputs() const noexcept override { return 1; }

  size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept override {
    if (nbInputs != kNbInputs || inputs[0].max.nbDims != kRank || inputs[2].max.nbDims != kRank) {
      return 0;
    }
    return slab_sla_cuda_workspace_bytes(toShape(inputs[0].max, inputs[2].max));
  }

  // eps is the only creation state beyond shapes and types (which TensorRT adds to the cache key itself).
  char const* getTimingCacheID() noexcept override { return mDescription.c_str(); }
  char const* getMetadataString() noexcept override { return mDescription.c_str(); }

  // -- IPluginV3OneRuntime -----------------------------------------------------------------------------------
  int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/,
                        int32_t nbOutputs) noexcept override {
    if (nbInputs != kNbInputs || nbOutputs != 1) {
      return fail(ErrorCode::kINVALID_ARGUMENT, "expects 3 inputs (q, k, v) and 1 output");
    }
    std::string const problem = checkShapes(in[0].dims, in[1].dims, in[2].dims);
    return problem.empty() ? 0 : fail(ErrorCode::kINVALID_ARGUMENT, problem);
  }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override {
    slab_dtype dtype;
    if (!toSlabDtype(inputDesc[0].type, &dtype)) {
      return fail(ErrorCode::kINVALID_ARGUMENT, "unsupported input type");
    }
    slab_sla_shape const shape = toShape(inputDesc[0].dims, inputDesc[2].dims);
    // TensorRT hands over the workspace reported for the profile's largest shape; this shape needs at most that.
    size_t const workspaceBytes = slab_sla_cuda_workspace_bytes(shape);
    int const status = slab_sla_cuda_forward(dtype, inputs[0], inputs[1], inputs[2], outputs[0], shape, mEps,
                                             workspace, workspaceBytes, stream);
    if (status != SLAB_OK) {
      return fail(ErrorCode::kFAILED_EXECUTION, std::string("enqueue failed: ") + slab_sla_status_string(status));
    }
    return 0;
  }

  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override {
    return new (std::nothrow) SlaPlugin(mEps, context != nullptr ? context->getErrorRecorder() : nullptr);
  }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    mSerialField = PluginField(kEpsField, &mEps, PluginFieldType::kFLOAT32, 1);
    mSerialFields.nbFields = 1;
    mSerialFields.fields = &mSerialField;
    return &mSerialFields;
  }

 private:
  int32_t fail(ErrorCode code, std::string const& detail) const noexcept {
    reportError(mRecorder, code, detail);
    return 1;
  }

  void describe() noexcept {
    try {
      char text[48];
      std::snprintf(text, sizeof(text), "eps=%.9g", static_cast<double>(mEps));
      mDescription = text;
    } catch (...) {
      mDescription.clear();
    }
  }

  float mEps;
  IErrorRecorder* mRecorder{nullptr};  // the execution context's, once attached (owned by TensorRT)
  std::string mDescription;
  PluginField mSerialField;
  PluginFieldCollection mSerialFields{};
};

class SlaPluginCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  SlaPluginCreator() {
    mField = PluginField(kEpsField, nullptr, PluginFieldType::kFLOAT32, 1);
    mFields.nbFields = 1;
    mFields.fields = &mField;
  }

  char const* getPluginName() const noexcept override { return kPluginName; }
  char const* getPluginVersion() const noexcept override { return kPluginVersion; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
  PluginFieldCollection const* getFieldNames() noexcept override { return &mFields; }

  // Build phase: the fields the ONNX parser read off the node (plugin_version / plugin_namespace select the
  // creator and are not passed on). Runtime phase: the fields getFieldsToSerialize returned.
  nvinfer1::IPluginV3* createPlugin(char const* /*name*/, PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase /*phase*/) noexcept override {
    float eps = kDefaultEps;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
      PluginField const& field = fc->fields[i];
      if (field.name == nullptr || std::strcmp(field.name, kEpsField) != 0) {
        reportError(nullptr, ErrorCode::kINVALID_ARGUMENT,
                    std::string("unknown plugin field ") + (field.name ? field.name : "(null)") + "; expected eps");
        return nullptr;
      }
      if (field.data == nullptr || field.length != 1 ||
          (field.type != PluginFieldType::kFLOAT32 && field.type != PluginFieldType::kFLOAT64)) {
        reportError(nullptr, ErrorCode::kINVALID_ARGUMENT, "field eps must be one float32 (a float attribute)");
        return nullptr;
      }
      eps = field.type == PluginFieldType::kFLOAT32
                ? *static_cast<float const*>(field.data)
                : static_cast<float>(*static_cast<double const*>(field.data));
    }
    if (!std::isfinite(eps) || eps < 0.0F) {
      reportError(nullptr, ErrorCode::kINVALID_ARGUMENT, "eps must be finite and >= 0, got " + std::to_string(eps));
      return nullptr;
    }
    return new (std::nothrow) SlaPlugin(eps);
  }

 private:
  PluginField mField;
  PluginFieldCollection mFields{};
};

}  // namespace
}  // namespace slab_trt

// -- library entry points (IPluginRegistry::loadLibrary) ---------------------------------------------------------
extern "C" {

SLAB_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  slab_trt::gLoggerFinder.store(finder);
}

SLAB_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static slab_trt::SlaPluginCreator creator;
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
  nbCreators = 1;
  return creators;
}

}  // extern "C"
