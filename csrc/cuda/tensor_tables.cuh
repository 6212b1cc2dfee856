// The tables a launch of the step reads (note [Tensor tables]): built, keyed, kept and ordered on
// streams with the CUDA runtime alone, so that the same code runs in the extension and, without
// torch, under the CPU emulation (tests/cuda/test_tensor_tables.cu). What needs torch (memory from
// its caching allocators, the current stream, the op) stays in the glue, csrc/cuda/adam_step.cu,
// which hands this code its memory through TableMemory.
//
// note [Tensor tables]
// The kernel reads its tensors from a table in device memory: [counter pairs | BucketSpec[] |
// TensorEntry[] | ChunkTask[]]. Each op call of the optimizer keeps its tables in a TableSet under
// its handle (note [Bucket handles]):
//
// * Steady state builds nothing. The call's pointers are compared with the current table's key on
//   the host; in a training loop params and states never move and the caching allocator hands the
//   grads the same addresses step after step, so every later step is one launch and no copy.
// * A table is never written once filled. When the pointers change, a new table is built (an
//   asynchronous copy from pinned memory on the launch's stream, no sync) and the set lets go of the
//   old one, whose memory is freed in stream order.
// * Ordered on every stream that reads it. An eager fill records an event; the first launch on any
//   other stream waits for it (once per stream), and a capture records an external wait on it into
//   its graph, so a launch never reads a table whose copy has not run.
// * Built while the stream is capturing, the copy is recorded into the graph (every replay refills
//   the table before the kernel reads it) and eager calls never use that table: until the first
//   replay its memory holds nothing. Warming up with the grads the capture will use
//   (zero_grad(set_to_none=False)) keeps that copy out of the replays.
// * A graph keeps every table it reads alive: the capture gives the graph a reference (a CUDA user
//   object), so a graph replayed after its optimizer (and the handle) died still reads live memory.
//   The graph's release, run by CUDA where no CUDA call is allowed, only queues the table; the next
//   prepare_launch of any set outside a capture frees it (a table replaced during a capture is
//   queued the same way: a capture is left without event destruction and frees).
// * Every launch has its own pair of counters (LaunchCounters): eager launches one per stream, a
//   captured launch one of its own, so launches that may overlap never share one. Streams are told
//   apart by cudaStreamGetId, never by their handle's value, which a new stream may reuse while the
//   destroyed one's last launch still runs. When the kCounterSlots pairs are taken (many streams or
//   captures), the same content goes into a new table.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "../common/step_plan.h"
#include "adam_step_kernel.cuh"

namespace lrfused {
namespace cuda {

constexpr int kCounterSlots = 32;

// The memory of one table, given by whoever builds it (the glue: torch's caching allocators; the
// tests: cudaMalloc). Freed by its destructor, which must free in stream order (device memory not
// reused before the work of every stream named in used_on has run).
class TableMemory {
 public:
  virtual ~TableMemory() = default;
  virtual uint8_t* host() = 0;  // pinned; the table is written here, then copied
  virtual uint8_t* device() = 0;
  // Copies the table from host() to device() on `stream`, which is not capturing; host() must stay
  // untouched until that copy has run.
  virtual cudaError_t copy_eagerly(cudaStream_t stream, size_t bytes) = 0;
  // A launch on `stream` reads device(): once freed, it must wait for that stream's work so far.
  virtual void used_on(cudaStream_t stream) = 0;
};

// Memory of `bytes` bytes for a table, on the current device.
using AllocateTable = std::function<std::unique_ptr<TableMemory>(size_t bytes)>;

struct Table {
  std::vector<uintptr_t> key;  // every pointer and size of the call and its buckets' words, in order
  std::unique_ptr<TableMemory> memory;
  size_t bytes = 0;
  size_t buckets_offset = 0;
  size_t entries_offset = 0;
  size_t tasks_offset = 0;
  int32_t num_tasks = 0;
  bool filled_in_capture = false;                   // its content arrives with each replay: never used eagerly
  unsigned long long capture = 0;                   // the capture that filled it, when filled_in_capture
  cudaEvent_t filled = nullptr;                     // recorded after an eager fill
  std::vector<unsigned long long> ordered_streams;  // stream ids whose later work follows the fill
  std::vector<std::pair<unsigned long long, int>> eager_slots;  // stream id, counter pair
  int slots_used = 0;

  Table() = default;
  Table(const Table&) = delete;
  Table& operator=(const Table&) = delete;
  ~Table();
};

// The tables of one op call (one handle): the current one. Graphs hold their own references.
struct TableSet {
  std::mutex mutex;
  std::shared_ptr<Table> current;
  int64_t tables_built = 0;  // for the tests and the benchmarks: steady state builds none
};

// What one launch reads: pointers into its table's device memory.
struct LaunchTable {
  LaunchCounters* counters;
  const BucketSpec* buckets;
  const TensorEntry* tensors;
  const ChunkTask* tasks;
  int32_t num_tasks;
};

// The key of a call: every pointer and size of its tensors and every word of its buckets.
std::vector<uintptr_t> table_key(const std::vector<BucketSpec>& buckets, const std::vector<TensorEntry>& entries);

// The table and counter pair for a launch on `stream` (the current device's), built, reused or
// replaced as note [Tensor tables] says, with whatever wait the stream needs enqueued on it. The
// launch itself is the caller's, on the same stream, before the set is used again.
cudaError_t prepare_launch(TableSet& set, const std::vector<BucketSpec>& buckets,
                           const std::vector<TensorEntry>& entries, cudaStream_t stream, const AllocateTable& allocate,
                           LaunchTable* launch);

// Frees the tables whose last graph was destroyed and that no set holds any more (prepare_launch
// does it first), and says how many are waiting for it.
void free_tables_released_by_graphs();
size_t tables_awaiting_release();

}  // namespace cuda
}  // namespace lrfused
