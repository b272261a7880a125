// Drives libslab_trt_plugin.so the way TensorRT does, on the CPU and without TensorRT: dlopen the library, look up
// the loadLibrary entry points, hand over a logger finder, take the creator from getCreators, create plugins from
// PluginFields as the ONNX parser and the engine deserializer do, and call every IPluginV3 capability. The fused
// kernel is replaced by sla_abi_recorder.c, which writes the arguments it received into the output buffer.
//
//   trt_plugin_harness LIB      exits 0 and prints "harness: N checks passed", or prints each failed check and
//                               exits 1
#include <NvInferRuntime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "plugin_library.h"
#include "sla_abi_recorder.h"

using namespace nvinfer1;

namespace {

int gChecks = 0;
int gFailures = 0;

void check(bool ok, char const* what) {
  ++gChecks;
  if (!ok) {
    ++gFailures;
    std::printf("FAIL: %s\n", what);
  }
}

class RecordingLogger : public ILogger {
 public:
  void log(Severity severity, AsciiChar const* msg) noexcept override {
    if (severity <= Severity::kERROR) {
      errors.emplace_back(msg);
    }
  }
  bool sawError(char const* part) const {
    for (auto const& e : errors) {
      if (e.find(part) != std::string::npos) return true;
    }
    return false;
  }
  std::vector<std::string> errors;
};

class Finder : public ILoggerFinder {
 public:
  explicit Finder(ILogger* logger) : mLogger(logger) {}
  ILogger* findLogger() noexcept override { return mLogger; }

 private:
  ILogger* mLogger;
};

class RecordingErrorRecorder : public IErrorRecorder {
 public:
  int32_t getNbErrors() const noexcept override { return static_cast<int32_t>(codes.size()); }
  ErrorCode getErrorCode(int32_t i) const noexcept override { return codes.at(i); }
  ErrorDesc getErrorDesc(int32_t i) const noexcept override { return descs.at(i).c_str(); }
  bool hasOverflowed() const noexcept override { return false; }
  void clear() noexcept override { codes.clear(), descs.clear(); }
  bool reportError(ErrorCode code, ErrorDesc desc) noexcept override {
    codes.push_back(code);
    descs.emplace_back(desc);
    return true;
  }
  RefCount incRefCount() noexcept override { return ++refs; }
  RefCount decRefCount() noexcept override { return --refs; }
  std::vector<ErrorCode> codes;
  std::vector<std::string> descs;
  RefCount refs{0};
};

// The plugin builds no new expressions; this only gives getOutputShapes a builder to be handed.
class UnusedExprBuilder : public IExprBuilder {};

class Context : public IPluginResourceContext {
 public:
  explicit Context(IErrorRecorder* recorder) : mRecorder(recorder) {}
  IGpuAllocator* getGpuAllocator() const noexcept override { return nullptr; }
  IErrorRecorder* getErrorRecorder() const noexcept override { return mRecorder; }

 private:
  IErrorRecorder* mRecorder;
};

Dims dims4(int64_t a, int64_t b, int64_t c, int64_t d) {
  Dims out{};
  out.nbDims = 4;
  out.d[0] = a, out.d[1] = b, out.d[2] = c, out.d[3] = d;
  return out;
}

DynamicPluginTensorDesc dynamicDesc(Dims dims, Dims max, DataType type = DataType::kFLOAT) {
  DynamicPluginTensorDesc desc{};
  desc.desc.dims = dims;
  desc.desc.type = type;
  desc.desc.format = TensorFormat::kLINEAR;
  desc.min = max;
  desc.opt = max;
  desc.max = max;
  return desc;
}

PluginTensorDesc tensorDesc(Dims dims, DataType type, TensorFormat format = TensorFormat::kLINEAR) {
  PluginTensorDesc desc{};
  desc.dims = dims;
  desc.type = type;
  desc.format = format;
  desc.scale = -1.0F;
  return desc;
}

float serializedEps(IPluginV3* plugin) {
  auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  PluginFieldCollection const* fc = runtime->getFieldsToSerialize();
  if (fc == nullptr || fc->nbFields != 1 || std::strcmp(fc->fields[0].name, "eps") != 0 ||
      fc->fields[0].type != PluginFieldType::kFLOAT32 || fc->fields[0].length != 1) {
    return NAN;
  }
  return *static_cast<float const*>(fc->fields[0].data);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::printf("usage: %s LIB\n", argv[0]);
    return 2;
  }
  PluginLibrary library;
  bool const opened = openPluginLibrary(argv[1], &library);
  check(opened, "the library opens and exports setLoggerFinder and getCreators");
  if (!opened) return 1;
  check(dlsym(library.handle, "slab_sla_cuda_forward") == nullptr, "the kernel ABI stays local to the library");

  RecordingLogger logger;
  Finder finder(&logger);
  library.setLoggerFinder(&finder);

  // -- the creator, as IPluginRegistry::loadLibrary and the ONNX parser see it ------------------------------------
  int32_t nbCreators = -1;
  IPluginCreatorInterface* const* creators = library.getCreators(nbCreators);
  check(nbCreators == 1 && creators != nullptr && creators[0] != nullptr, "one creator");
  InterfaceInfo info = creators[0]->getInterfaceInfo();
  check(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0 && info.major == 1, "creator is an IPluginCreatorV3One");
  auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
  check(std::strcmp(creator->getPluginName(), "SlabLinearAttention") == 0, "creator name");
  check(std::strcmp(creator->getPluginVersion(), "1") == 0, "creator version");
  check(std::strcmp(creator->getPluginNamespace(), "slab") == 0, "creator namespace");
  PluginFieldCollection const* names = creator->getFieldNames();
  check(names != nullptr && names->nbFields == 1 && std::strcmp(names->fields[0].name, "eps") == 0 &&
            names->fields[0].type == PluginFieldType::kFLOAT32,
        "the creator asks the parser for one float field eps");

  // What the ONNX parser passes for a float attribute: kFLOAT32, length 1.
  float const eps = 1e-4F;
  PluginField epsField("eps", &eps, PluginFieldType::kFLOAT32, 1);
  PluginFieldCollection fc{1, &epsField};
  IPluginV3* plugin = creator->createPlugin("node_0", &fc, TensorRTPhase::kBUILD);
  check(plugin != nullptr, "createPlugin(eps) succeeds");
  if (plugin == nullptr) return 1;
  check(std::strcmp(plugin->getInterfaceInfo().kind, "PLUGIN") == 0, "plugin is an IPluginV3");

  auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
  auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
  auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  check(core != nullptr && build != nullptr && runtime != nullptr, "core, build and runtime capabilities");
  check(std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0, "core capability kind");
  check(std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0, "build capability kind");
  check(std::strcmp(runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0, "runtime capability kind");
  check(std::strcmp(core->getPluginName(), "SlabLinearAttention") == 0 &&
            std::strcmp(core->getPluginVersion(), "1") == 0 && std::strcmp(core->getPluginNamespace(), "slab") == 0,
        "plugin name, version and namespace match the creator's");

  // -- build capability ---------------------------------------------------------------------------------------
  check(build->getNbOutputs() == 1, "one output");
  DataType inTypes[3] = {DataType::kHALF, DataType::kHALF, DataType::kHALF};
  DataType outType = DataType::kFLOAT;
  check(build->getOutputDataTypes(&outType, 1, inTypes, 3) == 0 && outType == DataType::kHALF,
        "output type is the input type");

  // Output shape expressions: [B, N, H] of q, Dv of v. The expressions are opaque here: only pointers move.
  char exprs[12];
  auto expr = [&](int i) { return reinterpret_cast<IDimensionExpr const*>(&exprs[i]); };
  DimsExprs in[3];
  for (int t = 0; t < 3; ++t) {
    in[t].nbDims = 4;
    for (int a = 0; a < 4; ++a) in[t].d[a] = expr(t * 4 + a);
  }
  DimsExprs outExpr{};
  UnusedExprBuilder exprBuilder;
  check(build->getOutputShapes(in, 3, nullptr, 0, &outExpr, 1, exprBuilder) == 0, "getOutputShapes succeeds");
  check(outExpr.nbDims == 4 && outExpr.d[0] == expr(0) && outExpr.d[1] == expr(1) && outExpr.d[2] == expr(2) &&
            outExpr.d[3] == expr(11),
        "output shape is [B, N, H] of q and Dv of v");
  in[1].nbDims = 3;
  check(build->getOutputShapes(in, 3, nullptr, 0, &outExpr, 1, exprBuilder) != 0 && logger.sawError("rank 3"),
        "a 3-D input is refused with a logged error");
  in[1].nbDims = 4;

  // Formats: linear float / half / bf16, all tensors one type.
  DynamicPluginTensorDesc io[4];
  Dims q = dims4(2, 196, 3, 64), v = dims4(2, 196, 3, 32);
  for (int i = 0; i < 4; ++i) io[i] = dynamicDesc(i == 2 || i == 3 ? v : q, i == 2 || i == 3 ? v : q);
  for (DataType type : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16}) {
    for (int pos = 0; pos < 4; ++pos) io[pos].desc.type = type;
    bool all = true;
    for (int pos = 0; pos < 4; ++pos) all = all && build->supportsFormatCombination(pos, io, 3, 1);
    check(all, "float, half and bf16 are supported, one type for all tensors");
  }
  io[0].desc.type = DataType::kINT8;
  check(!build->supportsFormatCombination(0, io, 3, 1), "int8 is refused");
  io[0].desc.type = DataType::kFLOAT;
  io[2].desc.type = DataType::kHALF;
  check(!build->supportsFormatCombination(2, io, 3, 1), "mixed types are refused");
  io[2].desc.type = DataType::kFLOAT;
  io[1].desc.format = TensorFormat::kCHW4;
  check(!build->supportsFormatCombination(1, io, 3, 1), "non-linear formats are refused");
  io[1].desc.format = TensorFormat::kLINEAR;

  // configurePlugin: dynamic dims (-1) with the profile's max bound; D or Dv above 128 is refused.
  Dims qDyn = dims4(-1, -1, 3, 64), vDyn = dims4(-1, -1, 3, 32);
  DynamicPluginTensorDesc cin[3] = {dynamicDesc(qDyn, dims4(8, 4096, 3, 64)), dynamicDesc(qDyn, dims4(8, 4096, 3, 64)),
                                    dynamicDesc(vDyn, dims4(8, 4096, 3, 32))};
  DynamicPluginTensorDesc cout[1] = {dynamicDesc(vDyn, dims4(8, 4096, 3, 32))};
  check(build->configurePlugin(cin, 3, cout, 1) == 0, "configurePlugin accepts a dynamic profile");
  check(build->getWorkspaceSize(cin, 3, cout, 1) == slab_test_workspace_bytes({8, 4096, 3, 64, 32}),
        "workspace is the kernel's for the profile's largest shape");
  DynamicPluginTensorDesc wide[3] = {dynamicDesc(dims4(-1, -1, 1, 129), dims4(8, 64, 1, 129)),
                                     dynamicDesc(dims4(-1, -1, 1, 129), dims4(8, 64, 1, 129)),
                                     dynamicDesc(dims4(-1, -1, 1, 32), dims4(8, 64, 1, 32))};
  check(build->configurePlugin(wide, 3, cout, 1) != 0 && logger.sawError("exceed the kernel's limit of 128"),
        "D = 129 is refused with a logged error naming the limit");
  DynamicPluginTensorDesc mismatch[3] = {dynamicDesc(q, q), dynamicDesc(dims4(2, 197, 3, 64), dims4(2, 197, 3, 64)),
                                         dynamicDesc(v, v)};
  check(build->configurePlugin(mismatch, 3, cout, 1) != 0 && logger.sawError("must agree"),
        "q and k with different N are refused");
  check(build->configurePlugin(cin, 2, cout, 1) != 0, "two inputs are refused");
  std::string const cacheId = build->getTimingCacheID();
  check(cacheId.rfind("eps=", 0) == 0 && std::strtof(cacheId.c_str() + 4, nullptr) == eps,
        "timing cache id carries eps exactly");

  // -- serialization: the engine keeps eps and recreates the plugin from it -------------------------------------
  check(serializedEps(plugin) == eps, "getFieldsToSerialize carries eps");
  PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
  IPluginV3* restored = creator->createPlugin("node_0", saved, TensorRTPhase::kRUNTIME);
  check(restored != nullptr && serializedEps(restored) == eps, "a plugin recreated from its fields has the same eps");
  IPluginV3* cloned = plugin->clone();
  check(cloned != nullptr && cloned != plugin && serializedEps(cloned) == eps, "clone keeps eps");

  // -- runtime capability -------------------------------------------------------------------------------------
  RecordingErrorRecorder recorder;
  Context context(&recorder);
  IPluginV3* attached = runtime->attachToContext(&context);
  check(attached != nullptr && attached != plugin && serializedEps(attached) == eps, "attachToContext clones");
  auto* rt = static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME));

  Dims qRun = dims4(2, 5, 3, 16), vRun = dims4(2, 5, 3, 8);
  PluginTensorDesc inDesc[3] = {tensorDesc(qRun, DataType::kBF16), tensorDesc(qRun, DataType::kBF16),
                                tensorDesc(vRun, DataType::kBF16)};
  PluginTensorDesc outDesc[1] = {tensorDesc(vRun, DataType::kBF16)};
  check(rt->onShapeChange(inDesc, 3, outDesc, 1) == 0, "onShapeChange accepts matching shapes");
  PluginTensorDesc badDesc[3] = {inDesc[0], tensorDesc(dims4(2, 5, 4, 16), DataType::kBF16), inDesc[2]};
  check(rt->onShapeChange(badDesc, 3, outDesc, 1) != 0 && recorder.getNbErrors() == 1 &&
            recorder.codes[0] == ErrorCode::kINVALID_ARGUMENT,
        "onShapeChange refuses k with another H, through the context's error recorder");

  char qBuf[8], kBuf[8], vBuf[8], wsBuf[8];
  slab_test_call call{};
  void const* inputs[3] = {qBuf, kBuf, vBuf};
  void* outputs[1] = {&call};
  auto stream = reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(0x5eed));
  check(rt->enqueue(inDesc, outDesc, inputs, outputs, wsBuf, stream) == 0, "enqueue succeeds");
  check(call.dtype == SLAB_BFLOAT16, "enqueue passes the dtype (bf16)");
  check(call.q == qBuf && call.k == kBuf && call.v == vBuf, "enqueue passes q, k, v in order");
  check(call.shape.batch == 2 && call.shape.tokens == 5 && call.shape.heads == 3 && call.shape.head_dim == 16 &&
            call.shape.value_dim == 8,
        "enqueue passes B, N, H, D, Dv");
  check(call.eps == eps, "enqueue passes eps");
  check(call.workspace == wsBuf && call.workspace_bytes == slab_test_workspace_bytes(call.shape),
        "enqueue passes TensorRT's workspace and this shape's size");
  check(call.stream == static_cast<void*>(stream), "enqueue runs on TensorRT's stream");

  PluginTensorDesc failing[3] = {tensorDesc(dims4(SLAB_TEST_FAILING_BATCH, 5, 3, 16), DataType::kFLOAT),
                                 tensorDesc(dims4(SLAB_TEST_FAILING_BATCH, 5, 3, 16), DataType::kFLOAT),
                                 tensorDesc(dims4(SLAB_TEST_FAILING_BATCH, 5, 3, 8), DataType::kFLOAT)};
  check(rt->enqueue(failing, outDesc, inputs, outputs, wsBuf, stream) != 0, "a kernel error fails enqueue");
  check(recorder.getNbErrors() == 2 && recorder.codes[1] == ErrorCode::kFAILED_EXECUTION &&
            recorder.descs[1].find("workspace too small (recorder)") != std::string::npos,
        "the kernel's status string reaches the context's error recorder");

  // -- bad fields -----------------------------------------------------------------------------------------------
  int32_t const intEps = 1;
  PluginField intField("eps", &intEps, PluginFieldType::kINT32, 1);
  PluginFieldCollection intFc{1, &intField};
  check(creator->createPlugin("n", &intFc, TensorRTPhase::kBUILD) == nullptr && logger.sawError("one float32"),
        "an int eps is refused");
  PluginField otherField("alpha", &eps, PluginFieldType::kFLOAT32, 1);
  PluginFieldCollection otherFc{1, &otherField};
  check(creator->createPlugin("n", &otherFc, TensorRTPhase::kBUILD) == nullptr &&
            logger.sawError("unknown plugin field alpha"),
        "an unknown field is refused");
  float const nanEps = NAN;
  PluginField nanField("eps", &nanEps, PluginFieldType::kFLOAT32, 1);
  PluginFieldCollection nanFc{1, &nanField};
  check(creator->createPlugin("n", &nanFc, TensorRTPhase::kBUILD) == nullptr && logger.sawError("finite"),
        "a NaN eps is refused");
  PluginFieldCollection empty{0, nullptr};
  IPluginV3* defaulted = creator->createPlugin("n", &empty, TensorRTPhase::kBUILD);
  check(defaulted != nullptr && serializedEps(defaulted) == 1e-6F, "a node without eps gets SLA's 1e-6");

  for (IPluginV3* p : {plugin, restored, cloned, attached, defaulted}) delete p;
  dlclose(library.handle);
  std::printf("harness: %d checks, %d failed\n", gChecks, gFailures);
  return gFailures == 0 ? 0 : 1;
}
