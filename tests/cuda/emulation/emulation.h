// The CUDA runtime names lrfused's kernels and tests/cuda/*.cu use, on AMD's HIP-CPU (a header-only
// runtime that runs kernels on the CPU: each block on a TBB worker, a block's threads as fibers
// that switch at __syncthreads, __shared__ per block, atomics on std::atomic). Found first on the
// include path by scripts/cuda_emulation_check.sh, through the cuda_runtime.h, cuda_fp16.h and
// cuda_bf16.h beside this file.
//
// Beyond renaming, three things are emulated (each with what it cannot show):
//   * Stream capture and graphs: a launch, cudaMemcpyAsync or cudaMemsetAsync on a capturing
//     stream is recorded with its arguments by value (as a graph node holds them); a replay runs
//     the nodes in order on the stream. No dependency graph, no invalidation.
//   * While any capture in cudaStreamCaptureModeGlobal is open, a synchronous cudaMemcpy fails with
//     cudaErrorStreamCaptureImplicit, as CUDA refuses legacy-stream work then: a test that does it
//     fails here rather than only on a GPU.
//   * The device's SM count (LRFUSED_EMU_SMS, default 4) and the occupancy
//     (LRFUSED_EMU_BLOCKS_PER_SM, default HIP-CPU's answer): numbers, not a model of a GPU.
// It cannot show weak memory ordering (x86 is TSO and every atomic here is seq_cst), warp effects,
// misaligned vector accesses, register limits, libdevice's math, or real stream concurrency.
#pragma once

#include <hip/hip_runtime.h>

// The standard headers the sources use, before the attribute macros below (libstdc++ spells
// attributes with __noinline__, which the macro would break).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

// HIP-CPU marks device code with simd/flatten attributes, which only cost compile time here.
#undef __device__
#define __device__
#undef __global__
#define __global__
#undef __forceinline__
#define __forceinline__ inline
#ifndef __noinline__
#define __noinline__ __attribute__((noinline))
#endif
#define __grid_constant__

using cudaError_t = hipError_t;
using cudaStream_t = hipStream_t;
using cudaEvent_t = hipEvent_t;
#define cudaSuccess hipSuccess
#define cudaErrorInvalidValue hipErrorInvalidValue
#define cudaGetErrorString hipGetErrorString
#define cudaGetLastError hipGetLastError
#define cudaPeekAtLastError hipPeekAtLastError
#define cudaMalloc hipMalloc
#define cudaFree hipFree
#define cudaMemset hipMemset
#define cudaMemcpyHostToDevice hipMemcpyHostToDevice
#define cudaMemcpyDeviceToHost hipMemcpyDeviceToHost
#define cudaMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define cudaMemcpyDefault hipMemcpyDefault
#define cudaDeviceSynchronize hipDeviceSynchronize
#define cudaGetDeviceCount hipGetDeviceCount
#define cudaGetDevice hipGetDevice
#define cudaSetDevice hipSetDevice
#define cudaStreamCreate hipStreamCreate
#define cudaStreamCreateWithFlags hipStreamCreateWithFlags
#define cudaStreamNonBlocking hipStreamNonBlocking
#define cudaStreamDefault hipStreamDefault
#define cudaStreamDestroy hipStreamDestroy
#define cudaStreamSynchronize hipStreamSynchronize
#define cudaStreamWaitEvent hipStreamWaitEvent
#define cudaEventCreate hipEventCreate
#define cudaEventRecord hipEventRecord
#define cudaEventSynchronize hipEventSynchronize
#define cudaEventDestroy hipEventDestroy

// Errors the emulation itself returns, numbered as CUDA numbers them.
constexpr hipError_t cudaErrorStreamCaptureImplicit = static_cast<hipError_t>(906);

namespace lrfused_emulation {

inline int env_int(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::atoi(value) : fallback;
}

enum DeviceAttribute { kMultiProcessorCount = 16 };

}  // namespace lrfused_emulation

using cudaDeviceAttr = lrfused_emulation::DeviceAttribute;
#define cudaDevAttrMultiProcessorCount lrfused_emulation::kMultiProcessorCount

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int /*device*/) {
  if (attribute != lrfused_emulation::kMultiProcessorCount) return hipErrorInvalidValue;
  *value = lrfused_emulation::env_int("LRFUSED_EMU_SMS", 4);
  return hipSuccess;
}

template <typename Kernel>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel kernel, int block_size,
                                                                 size_t shared_bytes) {
  const int forced = lrfused_emulation::env_int("LRFUSED_EMU_BLOCKS_PER_SM", 0);
  if (forced > 0) {
    *blocks = forced;
    return hipSuccess;
  }
  return hipOccupancyMaxActiveBlocksPerMultiprocessor(blocks, kernel, block_size, shared_bytes);
}

enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2
};
enum cudaStreamCaptureStatus {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2
};

namespace lrfused_emulation {

struct Graph {
  std::vector<std::function<void(hipStream_t)>> nodes;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
};

struct Captures {
  std::mutex mutex;
  std::map<hipStream_t, Graph*> open;
  int global_mode = 0;  // open captures in cudaStreamCaptureModeGlobal
};

inline Captures& captures() {
  static Captures instance;
  return instance;
}

// The graph that `stream` is capturing into, or null.
inline Graph* capturing(hipStream_t stream) {
  Captures& c = captures();
  std::lock_guard<std::mutex> lock(c.mutex);
  const auto it = c.open.find(stream);
  return it == c.open.end() ? nullptr : it->second;
}

inline bool global_capture_open() {
  Captures& c = captures();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.global_mode > 0;
}

// LRFUSED_LAUNCH (csrc/cuda/launch.cuh) under the emulation: runs the grid now, or records it into
// the graph of a capturing stream with the arguments as they are now.
template <typename Kernel, typename... Args>
cudaError_t launch(Kernel* kernel, dim3 grid, dim3 block, unsigned shared_bytes, hipStream_t stream, Args... args) {
  const auto run = [=](hipStream_t on) { hipLaunchKernelGGL(kernel, grid, block, shared_bytes, on, args...); };
  if (Graph* graph = capturing(stream)) {
    graph->nodes.push_back(run);
  } else {
    run(stream);
  }
  return hipSuccess;
}

}  // namespace lrfused_emulation

using cudaGraph_t = lrfused_emulation::Graph*;
using cudaGraphExec_t = lrfused_emulation::Graph*;

inline cudaError_t cudaStreamBeginCapture(hipStream_t stream, cudaStreamCaptureMode mode) {
  if (stream == nullptr) return hipErrorInvalidValue;  // the legacy stream cannot capture
  lrfused_emulation::Captures& c = lrfused_emulation::captures();
  std::lock_guard<std::mutex> lock(c.mutex);
  if (c.open.count(stream) != 0) return hipErrorInvalidValue;
  auto* graph = new lrfused_emulation::Graph;
  graph->mode = mode;
  c.open[stream] = graph;
  if (mode == cudaStreamCaptureModeGlobal) ++c.global_mode;
  return hipSuccess;
}

inline cudaError_t cudaStreamEndCapture(hipStream_t stream, cudaGraph_t* graph) {
  lrfused_emulation::Captures& c = lrfused_emulation::captures();
  std::lock_guard<std::mutex> lock(c.mutex);
  const auto it = c.open.find(stream);
  if (it == c.open.end()) return hipErrorInvalidValue;
  *graph = it->second;
  if (it->second->mode == cudaStreamCaptureModeGlobal) --c.global_mode;
  c.open.erase(it);
  return hipSuccess;
}

inline cudaError_t cudaStreamIsCapturing(hipStream_t stream, cudaStreamCaptureStatus* status) {
  *status = lrfused_emulation::capturing(stream) != nullptr ? cudaStreamCaptureStatusActive
                                                            : cudaStreamCaptureStatusNone;
  return hipSuccess;
}

inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long /*flags*/ = 0) {
  *exec = new lrfused_emulation::Graph(*graph);
  return hipSuccess;
}

inline cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, hipStream_t stream) {
  for (auto& node : exec->nodes) node(stream);
  return hipGetLastError();
}

inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return hipSuccess;
}

inline cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return hipSuccess;
}

inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, hipMemcpyKind kind,
                                   hipStream_t stream = nullptr) {
  if (lrfused_emulation::Graph* graph = lrfused_emulation::capturing(stream)) {
    graph->nodes.push_back([=](hipStream_t on) { hipMemcpyAsync(dst, src, bytes, kind, on); });
    return hipSuccess;
  }
  return hipMemcpyAsync(dst, src, bytes, kind, stream);
}

inline cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, hipStream_t stream = nullptr) {
  if (lrfused_emulation::Graph* graph = lrfused_emulation::capturing(stream)) {
    graph->nodes.push_back([=](hipStream_t on) { hipMemsetAsync(dst, value, bytes, on); });
    return hipSuccess;
  }
  return hipMemsetAsync(dst, value, bytes, stream);
}

// A synchronous copy runs on the legacy stream, which CUDA refuses while a global-mode capture is
// open; HIP-CPU's copy otherwise waits for every stream first (stricter than CUDA's).
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, hipMemcpyKind kind) {
  if (lrfused_emulation::global_capture_open()) return cudaErrorStreamCaptureImplicit;
  return hipMemcpy(dst, src, bytes, kind);
}
