// The step on CUDA (note [One op per step]): the tensor tables and one launch on the current stream
// (the kernel is csrc/cuda/adam_step_kernel.cu); the ops gather and check their arguments in
// csrc/step_ops.cpp and hand the call to this runner. Only c10's CUDA headers are included:
// ATen/cuda/CUDAContext.h would pull in the cuBLAS, cuSPARSE and cuSOLVER headers, which a CUDA
// toolkit need not have.
//
// note [Tensor tables]
// The kernel reads its tensors from a table in device memory: [counter pairs | BucketSpec[] |
// TensorEntry[] | ChunkTask[]]. Each op call of the optimizer has its own set of tables, kept under
// its handle (note [Bucket handles]) and freed with it, so a table lives as long as what uses it:
//
// * Steady state builds nothing. The table is compared with the call's pointers on the host; in
//   a training loop params and states never move and the caching allocator hands the grads the
//   same addresses step after step, so every later step is one launch and no copy.
// * A table is never written once filled. When the pointers change, a new table is built (an
//   asynchronous copy from pinned memory on the current stream, no sync) and the old one is freed,
//   unless a CUDA graph captured a launch that reads it: then it is kept until the handle dies.
// * Built while the stream is capturing, the table's copy is recorded into the graph (so every
//   replay refills it before the kernel reads it) and eager calls never use that table: before
//   the first replay its memory holds nothing. Warming up with the same grad tensors that the
//   capture will use (zero_grad(set_to_none=False)) avoids that copy in the replays.
// * Every launch has its own pair of counters (LaunchCounters): eager launches one per stream, a
//   captured launch one of its own, so launches that overlap never share one.
#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "../handle.h"
#include "../ops.h"
#include "adam_step_kernel.cuh"

namespace lrfused {
namespace {

using cuda::ChunkTask;
using cuda::LaunchCounters;

// Counter pairs per table: eager streams and captures take one each, first come first served.
constexpr int kCounterSlots = 32;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

struct Table {
  std::vector<uintptr_t> key;  // every pointer and size of the call and its buckets' words, in order
  at::Tensor device;
  at::Tensor pinned;  // the host source of the copy, kept for a copy recorded into a graph
  cudaStream_t allocation_stream = nullptr;
  size_t buckets_offset = 0;
  size_t entries_offset = 0;
  size_t tasks_offset = 0;
  int32_t num_tasks = 0;
  bool filled_in_capture = false;  // its content arrives with each replay: never used eagerly
  bool read_by_graph = false;      // a captured launch reads it: kept until the handle dies
  std::vector<std::pair<cudaStream_t, int>> eager_slots;
  int slots_used = 0;
};

struct TableSet {
  std::mutex mutex;
  std::unique_ptr<Table> current;
  std::vector<std::unique_ptr<Table>> kept_for_graphs;
};

std::vector<uintptr_t> table_key(const std::vector<BucketSpec>& buckets, const std::vector<TensorEntry>& entries) {
  std::vector<uintptr_t> key;
  key.reserve(buckets.size() * (sizeof(BucketSpec) / sizeof(uintptr_t) + 1) + entries.size() * 6);
  key.push_back(buckets.size());
  for (const BucketSpec& b : buckets) {
    uintptr_t words[(sizeof(BucketSpec) + sizeof(uintptr_t) - 1) / sizeof(uintptr_t)] = {};
    std::memcpy(words, &b, sizeof(BucketSpec));
    key.insert(key.end(), std::begin(words), std::end(words));
  }
  for (const TensorEntry& e : entries) {
    key.insert(key.end(), {reinterpret_cast<uintptr_t>(e.param), reinterpret_cast<uintptr_t>(e.grad),
                           reinterpret_cast<uintptr_t>(e.exp_avg), reinterpret_cast<uintptr_t>(e.exp_avg_sq),
                           reinterpret_cast<uintptr_t>(e.max_exp_avg_sq),
                           static_cast<uintptr_t>(e.numel) ^ (static_cast<uintptr_t>(e.bucket) << 48)});
  }
  return key;
}

std::unique_ptr<Table> build_table(std::vector<uintptr_t> key, const std::vector<BucketSpec>& buckets,
                                   const std::vector<TensorEntry>& entries, int device, cudaStream_t stream,
                                   bool capturing) {
  std::vector<ChunkTask> tasks;
  for (size_t i = 0; i < entries.size(); ++i) {
    const int64_t chunks = (entries[i].numel + cuda::kChunkSize - 1) / cuda::kChunkSize;
    for (int64_t c = 0; c < chunks; ++c) {
      tasks.push_back({static_cast<int32_t>(i), static_cast<int32_t>(c)});
    }
  }
  auto table = std::make_unique<Table>();
  table->key = std::move(key);
  table->allocation_stream = stream;
  table->num_tasks = static_cast<int32_t>(tasks.size());
  table->buckets_offset = round_up(kCounterSlots * sizeof(LaunchCounters), 16);
  table->entries_offset = round_up(table->buckets_offset + buckets.size() * sizeof(BucketSpec), 16);
  table->tasks_offset = round_up(table->entries_offset + entries.size() * sizeof(TensorEntry), 16);
  const size_t bytes = std::max<size_t>(table->tasks_offset + tasks.size() * sizeof(ChunkTask), 16);
  {
    // A pinned allocation may call cudaHostAlloc, which a capture in the default (global) mode
    // refuses from this thread; it has nothing to do with the captured work.
    c10::cuda::CUDAStreamCaptureModeGuard relaxed(cudaStreamCaptureModeRelaxed);
    table->pinned = at::empty({static_cast<int64_t>(bytes)}, at::dtype(at::kByte).pinned_memory(true));
  }
  uint8_t* host = table->pinned.data_ptr<uint8_t>();
  std::memset(host, 0, bytes);  // every counter pair starts at zero
  if (!buckets.empty()) std::memcpy(host + table->buckets_offset, buckets.data(), buckets.size() * sizeof(BucketSpec));
  if (!entries.empty()) std::memcpy(host + table->entries_offset, entries.data(), entries.size() * sizeof(TensorEntry));
  if (!tasks.empty()) std::memcpy(host + table->tasks_offset, tasks.data(), tasks.size() * sizeof(ChunkTask));
  table->device = at::empty({static_cast<int64_t>(bytes)},
                            at::dtype(at::kByte).device(at::kCUDA, static_cast<c10::DeviceIndex>(device)));
  if (capturing) {
    // Recorded into the graph: each replay refills the table first. The pinned source lives as
    // long as the table, which the set keeps while the handle lives.
    C10_CUDA_CHECK(cudaMemcpyAsync(table->device.data_ptr(), host, bytes, cudaMemcpyHostToDevice, stream));
    table->filled_in_capture = true;
    table->read_by_graph = true;
  } else {
    // Through torch's copy, which keeps the pinned block from being reused before the copy ran.
    table->device.copy_(table->pinned, /*non_blocking=*/true);
  }
  return table;
}

// The counter pair of this launch (note [Tensor tables]); -1 when the table has none left.
int counter_slot(Table& table, cudaStream_t stream, bool capturing) {
  if (!capturing) {
    for (const auto& [s, slot] : table.eager_slots) {
      if (s == stream) return slot;
    }
  }
  if (table.slots_used == kCounterSlots) return -1;
  const int slot = table.slots_used++;
  if (!capturing) table.eager_slots.emplace_back(stream, slot);
  return slot;
}

struct Launch {
  const Table* table;
  int slot;
};

// The table and counter pair for this call, built or replaced as note [Tensor tables] says.
Launch prepare_launch(TableSet& set, const std::vector<BucketSpec>& buckets, const std::vector<TensorEntry>& entries,
                      int device, cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  const bool capturing = status == cudaStreamCaptureStatusActive;
  std::vector<uintptr_t> key = table_key(buckets, entries);
  std::lock_guard<std::mutex> lock(set.mutex);
  const auto retire_current = [&] {
    if (set.current && set.current->read_by_graph) set.kept_for_graphs.push_back(std::move(set.current));
    set.current.reset();
  };
  // A capture-filled table serves only the capture that filled it.
  const bool usable = set.current && set.current->key == key && !set.current->filled_in_capture;
  if (!usable) {
    retire_current();
    set.current = build_table(std::move(key), buckets, entries, device, stream, capturing);
  }
  int slot = counter_slot(*set.current, stream, capturing);
  if (slot < 0) {
    // Every counter pair is taken (many streams or captures): the same content, a new table.
    std::vector<uintptr_t> same_key = set.current->key;
    retire_current();
    set.current = build_table(std::move(same_key), buckets, entries, device, stream, capturing);
    slot = counter_slot(*set.current, stream, capturing);
  }
  Table& table = *set.current;
  if (capturing) {
    table.read_by_graph = true;
  } else if (stream != table.allocation_stream) {
    // Freed later, the table must not be reused before this stream's launch has run.
    c10::cuda::CUDACachingAllocator::recordStream(table.device.storage().data_ptr(),
                                                  c10::cuda::getStreamFromExternal(stream, device));
  }
  return {&table, slot};
}

size_t pack_bytes(ElementType type) { return cuda::kPackElements * cuda::element_size(type); }

bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

void run_step_cuda(StepCall& call, std::shared_ptr<void>* state) {
  const at::Device where = call.words->device();
  const c10::cuda::CUDAGuard guard(where);
  const int device = where.index();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();

  std::unique_ptr<WorkingLayout> layout;
  const std::vector<TensorEntry>& raw = raw_tensors(call, layout);
  std::vector<TensorEntry> entries;
  entries.reserve(raw.size());
  for (const TensorEntry& t : raw) {
    if (t.numel == 0) continue;
    const BucketSpec& bucket = call.buckets[t.bucket];
    const bool amsgrad = (bucket.flags & kFlagAmsgrad) != 0;
    const size_t pack = pack_bytes(static_cast<ElementType>(bucket.element_type));
    TensorEntry e = t;
    e.aligned = aligned_to(e.param, pack) && aligned_to(e.grad, pack) && aligned_to(e.exp_avg, pack) &&
                aligned_to(e.exp_avg_sq, pack) && (!amsgrad || aligned_to(e.max_exp_avg_sq, pack));
    entries.push_back(e);
  }

  // Without a handle (a direct call of the op) the tables live for this call only.
  std::shared_ptr<void> local;
  std::shared_ptr<void>& slot = state != nullptr ? *state : local;
  if (!slot) slot = std::make_shared<TableSet>();
  TableSet& set = *std::static_pointer_cast<TableSet>(slot);
  const Launch launch_table = prepare_launch(set, call.buckets, entries, device, stream);
  const Table& table = *launch_table.table;
  // Without a handle the set dies with this call: a table that a graph reads must outlive it.
  TORCH_CHECK(state != nullptr || !table.read_by_graph,
              "lrfused: a step captured in a CUDA graph needs a handle (lrfused::new_handle()) so that its "
              "table outlives the capture");
  uint8_t* base = static_cast<uint8_t*>(table.device.data_ptr());
  cuda::LaunchArgs launch{};
  launch.counters = reinterpret_cast<LaunchCounters*>(base) + launch_table.slot;
  launch.buckets = reinterpret_cast<const BucketSpec*>(base + table.buckets_offset);
  launch.tensors = reinterpret_cast<const TensorEntry*>(base + table.entries_offset);
  launch.tasks = reinterpret_cast<const ChunkTask*>(base + table.tasks_offset);
  launch.num_tasks = table.num_tasks;
  launch.num_buckets = static_cast<int32_t>(call.buckets.size());
  launch.deferred = call.deferred;
  launch.grad_scale = call.grad_scale != nullptr ? call.grad_scale->data_ptr<float>() : nullptr;
  launch.found_inf = call.found_inf != nullptr ? call.found_inf->data_ptr<float>() : nullptr;
  launch.invalid_steps = call.invalid_steps != nullptr ? call.invalid_steps->data_ptr<int64_t>() : nullptr;

  // note [Grid size] in adam_step_kernel.cuh. A call with no chunk (deferred steps only, or empty
  // tensors) still launches one block: it is the writer.
  const int num_blocks = std::max(1, std::min<int>(table.num_tasks, cuda::resident_blocks(device)));
  C10_CUDA_CHECK(cuda::launch_adam_step(launch, num_blocks, stream));

  if (layout) layout->write_back();
}

[[maybe_unused]] const bool registered = register_cuda_step_runner(&run_step_cuda);

}  // namespace

}  // namespace lrfused
