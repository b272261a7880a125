// Opens a TensorRT plugin library the way IPluginRegistry::loadLibrary does: dlopen, then the two entry points
// an IPluginV3 library exports. Shared by the CPU harness (tests/native) and the GPU harness (tests/gpu).
#ifndef SLAB_TEST_PLUGIN_LIBRARY_H_
#define SLAB_TEST_PLUGIN_LIBRARY_H_

#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <cstdio>

struct PluginLibrary {
  using SetLoggerFinder = void (*)(nvinfer1::ILoggerFinder*);
  using GetCreators = nvinfer1::IPluginCreatorInterface* const* (*)(int32_t&);
  void* handle{nullptr};
  SetLoggerFinder setLoggerFinder{nullptr};
  GetCreators getCreators{nullptr};
};

// Prints a "FAIL: ..." line and returns false when the library does not open or lacks an entry point.
inline bool openPluginLibrary(char const* path, PluginLibrary* library) {
  library->handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (library->handle == nullptr) {
    std::printf("FAIL: dlopen: %s\n", dlerror());
    return false;
  }
  library->setLoggerFinder = reinterpret_cast<PluginLibrary::SetLoggerFinder>(dlsym(library->handle, "setLoggerFinder"));
  library->getCreators = reinterpret_cast<PluginLibrary::GetCreators>(dlsym(library->handle, "getCreators"));
  if (library->setLoggerFinder == nullptr || library->getCreators == nullptr) {
    std::printf("FAIL: setLoggerFinder and getCreators are not both exported\n");
    return false;
  }
  return true;
}

#endif
