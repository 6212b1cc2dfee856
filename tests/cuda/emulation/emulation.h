// The CUDA runtime names lrfused's kernels and tests/cuda/*.cu use, on AMD's HIP-CPU (a header-only
// runtime that runs kernels on the CPU: each block on a TBB worker, a block's threads as fibers
// that switch at __syncthreads, __shared__ per block, atomics on std::atomic). Found first on the
// include path by scripts/cuda_emulation_check.sh, through the cuda_runtime.h, cuda_fp16.h and
// cuda_bf16.h beside this file.
//
// Beyond renaming, these are emulated (each with what it cannot show):
//   * Stream capture and graphs: a launch, cudaMemcpyAsync, cudaMemsetAsync or an external event
//     wait on a capturing stream is recorded with its arguments by value (as a graph node holds
//     them); a replay runs the nodes in order on the stream. No dependency graph, no invalidation,
//     no event recorded during a capture (refused).
//   * CUDA's capture rules that lrfused's code could break: while any capture in
//     cudaStreamCaptureModeGlobal is open, a synchronous cudaMemcpy fails
//     (cudaErrorStreamCaptureImplicit); a capturing stream may wait on an event recorded outside
//     the capture only with cudaEventWaitExternal (cudaErrorStreamCaptureIsolation otherwise).
//   * User objects: a graph holds references (cudaGraphRetainUserObject), an instantiated graph
//     its own; the destructor runs when the last one is released, on a thread of its own (as on
//     CUDA, but at once: CUDA may run it later).
//   * A stream held back by a test (lrfused_emulation::hold, release): its work waits in order, and
//     a stream that waits on an event it keeps is held until it has run up to it. Other waits on
//     events are made on the host when the work is issued (HIP-CPU's streams run in rounds, where
//     a real wait could block the stream it waits for).
//   * Stream identity: cudaStreamGetId, and a destroyed stream's handle value is handed to the
//     next stream created (a driver may do the same), with a new id.
//   * The device's SM count (LRFUSED_EMU_SMS, default 4) and the occupancy
//     (LRFUSED_EMU_BLOCKS_PER_SM, default HIP-CPU's answer): numbers, not a model of a GPU.
// It cannot show weak memory ordering (x86 is TSO and every atomic here is seq_cst), warp effects,
// misaligned vector accesses, register limits, libdevice's math, or real stream concurrency (HIP-CPU
// runs the streams' queued work in rounds, in parallel across streams).
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
#include <thread>
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
#define cudaStreamNonBlocking hipStreamNonBlocking
#define cudaStreamDefault hipStreamDefault
#define cudaStreamSynchronize hipStreamSynchronize
#define cudaEventSynchronize hipEventSynchronize
#define cudaEventDestroy hipEventDestroy
#define cudaMallocHost hipHostMalloc
#define cudaFreeHost hipHostFree
#define cudaEventDefault 0x00
#define cudaEventDisableTiming 0x02
#define cudaEventWaitDefault 0x00
#define cudaEventWaitExternal 0x01
#define cudaUserObjectNoDestructorSync 0x1
#define cudaGraphUserObjectMove 0x1

// Errors the emulation itself returns, numbered as CUDA numbers them.
constexpr hipError_t cudaErrorStreamCaptureUnsupported = static_cast<hipError_t>(900);
constexpr hipError_t cudaErrorStreamCaptureInvalidated = static_cast<hipError_t>(901);
constexpr hipError_t cudaErrorStreamCaptureIsolation = static_cast<hipError_t>(905);
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

// A user object: a pointer and its destructor, run when the last reference is released.
struct UserObject {
  std::atomic<unsigned> references;
  void* pointer;
  void (*destroy)(void*);
};

// The destructor runs on a thread of its own, as CUDA runs it (here at once, joined).
inline void release(UserObject* object, unsigned count) {
  if (object->references.fetch_sub(count) == count) {
    std::thread([object] { object->destroy(object->pointer); }).join();
    delete object;
  }
}

// A captured graph, and (copied by cudaGraphInstantiate) an instantiated one: both hold their own
// references to the user objects retained during the capture.
struct Graph {
  std::vector<std::function<void(hipStream_t)>> nodes;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  unsigned long long id = 0;
  std::vector<std::pair<UserObject*, unsigned>> owned;

  Graph() = default;
  Graph(const Graph& other) : nodes(other.nodes), mode(other.mode), id(other.id), owned(other.owned) {
    for (auto& [object, count] : owned) object->references += count;
  }
  Graph& operator=(const Graph&) = delete;
  ~Graph() {
    for (auto& [object, count] : owned) release(object, count);
  }
};

struct Captures {
  std::mutex mutex;
  std::map<hipStream_t, Graph*> open;
  int global_mode = 0;  // open captures in cudaStreamCaptureModeGlobal
  unsigned long long next_id = 1;
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

// Streams a test holds back (hold): their work is kept here, in order, until release issues it.
// HIP-CPU runs the streams' queued work in rounds and may run one stream's queue before another's
// on one thread, so a real cross-stream wait could block the other stream's work for good; an
// event recorded on a held stream is therefore waited on here: the waiting stream is held too,
// and released once the event's stream has run up to it.
struct Holds {
  std::mutex mutex;
  std::map<hipStream_t, std::vector<std::function<void()>>> held;
  std::map<hipEvent_t, hipStream_t> pending;  // events whose record a held stream keeps
};

inline Holds& holds() {
  static Holds instance;
  return instance;
}

// Work for `stream`: recorded into its capture, kept while it is held, or issued now.
inline void issue(hipStream_t stream, const std::function<void(hipStream_t)>& work) {
  if (Graph* graph = capturing(stream)) {
    graph->nodes.push_back(work);
    return;
  }
  {
    Holds& h = holds();
    std::lock_guard<std::mutex> lock(h.mutex);
    const auto it = h.held.find(stream);
    if (it != h.held.end()) {
      it->second.push_back([=] { work(stream); });
      return;
    }
  }
  work(stream);
}

// The test's gate: `stream` runs nothing until release(stream).
inline void hold(hipStream_t stream) {
  Holds& h = holds();
  std::lock_guard<std::mutex> lock(h.mutex);
  h.held[stream];
}

inline void release(hipStream_t stream) {
  std::vector<std::function<void()>> work;
  {
    Holds& h = holds();
    std::lock_guard<std::mutex> lock(h.mutex);
    const auto it = h.held.find(stream);
    if (it == h.held.end()) return;
    work = std::move(it->second);
    h.held.erase(it);
  }
  for (auto& item : work) item();
}

// LRFUSED_LAUNCH (csrc/cuda/launch.cuh) under the emulation: runs the grid now, keeps it for a held
// stream, or records it into the graph of a capturing stream with the arguments as they are now.
template <typename Kernel, typename... Args>
cudaError_t launch(Kernel* kernel, dim3 grid, dim3 block, unsigned shared_bytes, hipStream_t stream, Args... args) {
  issue(stream, [=](hipStream_t on) { hipLaunchKernelGGL(kernel, grid, block, shared_bytes, on, args...); });
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
  graph->id = c.next_id++;
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
  *status =
      lrfused_emulation::capturing(stream) != nullptr ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
  return hipSuccess;
}

inline cudaError_t cudaStreamGetCaptureInfo(hipStream_t stream, cudaStreamCaptureStatus* status,
                                            unsigned long long* id = nullptr, cudaGraph_t* graph = nullptr) {
  lrfused_emulation::Graph* open = lrfused_emulation::capturing(stream);
  *status = open != nullptr ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
  if (id != nullptr) *id = open != nullptr ? open->id : 0;
  if (graph != nullptr) *graph = open;
  return hipSuccess;
}

using cudaUserObject_t = lrfused_emulation::UserObject*;
using cudaHostFn_t = void (*)(void*);

inline cudaError_t cudaUserObjectCreate(cudaUserObject_t* object, void* pointer, cudaHostFn_t destroy,
                                        unsigned initial_references, unsigned flags) {
  if (flags != cudaUserObjectNoDestructorSync || initial_references == 0) return hipErrorInvalidValue;
  *object = new lrfused_emulation::UserObject{{initial_references}, pointer, destroy};
  return hipSuccess;
}

inline cudaError_t cudaUserObjectRelease(cudaUserObject_t object, unsigned count = 1) {
  lrfused_emulation::release(object, count);
  return hipSuccess;
}

// With cudaGraphUserObjectMove the caller's references move to the graph; otherwise new ones.
inline cudaError_t cudaGraphRetainUserObject(cudaGraph_t graph, cudaUserObject_t object, unsigned count = 1,
                                             unsigned flags = 0) {
  if (graph == nullptr || object == nullptr) return hipErrorInvalidValue;
  if ((flags & cudaGraphUserObjectMove) == 0) object->references += count;
  graph->owned.emplace_back(object, count);
  return hipSuccess;
}

inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long /*flags*/ = 0) {
  *exec = new lrfused_emulation::Graph(*graph);
  return hipSuccess;
}

inline cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, hipStream_t stream) {
  lrfused_emulation::issue(stream, [exec](hipStream_t on) {
    for (auto& node : exec->nodes) node(on);
  });
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
  lrfused_emulation::issue(stream, [=](hipStream_t on) { hipMemcpyAsync(dst, src, bytes, kind, on); });
  return hipSuccess;
}

inline cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, hipStream_t stream = nullptr) {
  lrfused_emulation::issue(stream, [=](hipStream_t on) { hipMemsetAsync(dst, value, bytes, on); });
  return hipSuccess;
}

// A synchronous copy runs on the legacy stream, which CUDA refuses while a global-mode capture is
// open; HIP-CPU's copy otherwise waits for every stream first (stricter than CUDA's).
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, hipMemcpyKind kind) {
  if (lrfused_emulation::global_capture_open()) return cudaErrorStreamCaptureImplicit;
  return hipMemcpy(dst, src, bytes, kind);
}

namespace lrfused_emulation {

// Every stream's id (cudaStreamGetId), and the handles of destroyed streams, which the next
// streams created get back: a handle value is reused, an id never is.
struct Streams {
  std::mutex mutex;
  std::map<hipStream_t, unsigned long long> ids;
  std::vector<hipStream_t> destroyed;
  unsigned long long next_id = 2;  // 1 is the legacy default stream's
};

inline Streams& streams() {
  static Streams instance;
  return instance;
}

}  // namespace lrfused_emulation

inline cudaError_t cudaStreamCreate(hipStream_t* stream) {
  lrfused_emulation::Streams& s = lrfused_emulation::streams();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (!s.destroyed.empty()) {
    *stream = s.destroyed.back();
    s.destroyed.pop_back();
  } else {
    const hipError_t error = hipStreamCreate(stream);
    if (error != hipSuccess) return error;
  }
  s.ids[*stream] = s.next_id++;
  return hipSuccess;
}

inline cudaError_t cudaStreamCreateWithFlags(hipStream_t* stream, unsigned /*flags*/) {
  return cudaStreamCreate(stream);
}

// Its queued work still runs, as on CUDA; the handle goes to the next stream created.
inline cudaError_t cudaStreamDestroy(hipStream_t stream) {
  lrfused_emulation::Streams& s = lrfused_emulation::streams();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.ids.erase(stream) == 0) return hipErrorInvalidHandle;
  s.destroyed.push_back(stream);
  return hipSuccess;
}

inline cudaError_t cudaStreamGetId(hipStream_t stream, unsigned long long* id) {
  if (stream == nullptr) {
    *id = 1;
    return hipSuccess;
  }
  lrfused_emulation::Streams& s = lrfused_emulation::streams();
  std::lock_guard<std::mutex> lock(s.mutex);
  const auto it = s.ids.find(stream);
  if (it == s.ids.end()) return hipErrorInvalidHandle;
  *id = it->second;
  return hipSuccess;
}

inline cudaError_t cudaEventCreate(hipEvent_t* event) { return hipEventCreate(event); }

inline cudaError_t cudaEventCreateWithFlags(hipEvent_t* event, unsigned /*flags*/) { return hipEventCreate(event); }

// An event recorded during a capture would belong to the graph; lrfused records none, and the
// emulation does not model them.
inline cudaError_t cudaEventRecord(hipEvent_t event, hipStream_t stream = nullptr) {
  if (lrfused_emulation::capturing(stream) != nullptr) return cudaErrorStreamCaptureUnsupported;
  lrfused_emulation::Holds& h = lrfused_emulation::holds();
  std::unique_lock<std::mutex> lock(h.mutex);
  const auto it = h.held.find(stream);
  if (it == h.held.end()) {
    h.pending.erase(event);
    lock.unlock();
    return hipEventRecord(event, stream);
  }
  h.pending[event] = stream;
  it->second.push_back([event, stream, &h] {
    {
      std::lock_guard<std::mutex> relock(h.mutex);
      const auto p = h.pending.find(event);
      if (p != h.pending.end() && p->second == stream) h.pending.erase(p);
    }
    hipEventRecord(event, stream);
  });
  return hipSuccess;
}

// A capturing stream may wait on an event recorded outside the capture only as an external event
// node (cudaEventWaitExternal), which each replay waits on. Outside a capture the wait is made on
// the host when the stream's work is issued (stricter than CUDA, and free of HIP-CPU's rounds), or,
// for an event a held stream keeps, by holding this stream until that one has run up to it.
inline cudaError_t cudaStreamWaitEvent(hipStream_t stream, hipEvent_t event, unsigned flags = 0) {
  if (lrfused_emulation::Graph* graph = lrfused_emulation::capturing(stream)) {
    if ((flags & cudaEventWaitExternal) == 0) return cudaErrorStreamCaptureIsolation;
    graph->nodes.push_back([=](hipStream_t) { hipEventSynchronize(event); });
    return hipSuccess;
  }
  lrfused_emulation::Holds& h = lrfused_emulation::holds();
  {
    std::lock_guard<std::mutex> lock(h.mutex);
    const auto p = h.pending.find(event);
    if (p != h.pending.end()) {
      const hipStream_t recorder = p->second;
      h.held[stream];  // held from now on
      h.held[recorder].push_back([=] {
        hipStreamSynchronize(recorder);
        lrfused_emulation::release(stream);
      });
      return hipSuccess;
    }
  }
  lrfused_emulation::issue(stream, [=](hipStream_t) { hipEventSynchronize(event); });
  return hipSuccess;
}
