// The tensor tables of the step's launches (note [Tensor tables] in tensor_tables.cuh): host code
// on the CUDA runtime only, built by nvcc into the extension and by g++ for the CPU emulation.
#include "tensor_tables.cuh"

#include <algorithm>
#include <cstring>
#include <iterator>

namespace lrfused {
namespace cuda {
namespace {

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// Tables let go by the graphs that read them (a user object's destructor, run by CUDA on a thread
// of its own where no CUDA call is allowed, so it only queues them) and tables replaced during a
// capture, freed by the next prepare_launch outside a capture.
struct Releases {
  std::mutex mutex;
  std::vector<std::shared_ptr<Table>> pending;
};

Releases& releases() {
  static auto* instance = new Releases();  // never destroyed: a graph may die after static teardown
  return *instance;
}

void release_later(std::shared_ptr<Table> table) {
  Releases& r = releases();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.pending.push_back(std::move(table));
}

void release_from_graph(void* reference) {
  std::unique_ptr<std::shared_ptr<Table>> table(static_cast<std::shared_ptr<Table>*>(reference));
  release_later(std::move(*table));
}

}  // namespace

void free_tables_released_by_graphs() {
  std::vector<std::shared_ptr<Table>> released;
  {
    Releases& r = releases();
    std::lock_guard<std::mutex> lock(r.mutex);
    released.swap(r.pending);
  }
  // `released` is destroyed here, outside the lock: freeing calls into the caller's allocator.
}

namespace {

// The graph `stream` captures into holds a reference to `table` from now on.
cudaError_t keep_for_graph(cudaStream_t stream, const std::shared_ptr<Table>& table) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  cudaGraph_t graph = nullptr;
  // The graph being captured: CUDA 13's cudaStreamGetCaptureInfo returns it, CUDA 12's returns
  // only the status and id (its _v2 the graph too).
#if !defined(CUDART_VERSION) || CUDART_VERSION >= 13000
  cudaError_t error = cudaStreamGetCaptureInfo(stream, &status, nullptr, &graph);
#else
  cudaError_t error = cudaStreamGetCaptureInfo_v2(stream, &status, nullptr, &graph, nullptr, nullptr);
#endif
  if (error != cudaSuccess) return error;
  auto reference = std::make_unique<std::shared_ptr<Table>>(table);
  cudaUserObject_t object = nullptr;
  error = cudaUserObjectCreate(&object, reference.get(), &release_from_graph, 1, cudaUserObjectNoDestructorSync);
  if (error != cudaSuccess) return error;
  reference.release();  // the user object owns it now
  return cudaGraphRetainUserObject(graph, object, 1, cudaGraphUserObjectMove);
}

cudaError_t build_table(std::vector<uintptr_t> key, const std::vector<BucketSpec>& buckets,
                        const std::vector<TensorEntry>& entries, cudaStream_t stream, unsigned long long stream_id,
                        bool capturing, const AllocateTable& allocate, std::shared_ptr<Table>* out) {
  std::vector<ChunkTask> tasks;
  for (size_t i = 0; i < entries.size(); ++i) {
    const int64_t chunks = (entries[i].numel + kChunkSize - 1) / kChunkSize;
    for (int64_t c = 0; c < chunks; ++c) {
      tasks.push_back({static_cast<int32_t>(i), static_cast<int32_t>(c)});
    }
  }
  auto table = std::make_shared<Table>();
  table->key = std::move(key);
  table->num_tasks = static_cast<int32_t>(tasks.size());
  table->buckets_offset = round_up(kCounterSlots * sizeof(LaunchCounters), 16);
  table->entries_offset = round_up(table->buckets_offset + buckets.size() * sizeof(BucketSpec), 16);
  table->tasks_offset = round_up(table->entries_offset + entries.size() * sizeof(TensorEntry), 16);
  table->bytes = std::max<size_t>(table->tasks_offset + tasks.size() * sizeof(ChunkTask), 16);
  table->memory = allocate(table->bytes);
  uint8_t* host = table->memory->host();
  std::memset(host, 0, table->bytes);  // every counter pair starts at zero
  if (!buckets.empty()) std::memcpy(host + table->buckets_offset, buckets.data(), buckets.size() * sizeof(BucketSpec));
  if (!entries.empty()) std::memcpy(host + table->entries_offset, entries.data(), entries.size() * sizeof(TensorEntry));
  if (!tasks.empty()) std::memcpy(host + table->tasks_offset, tasks.data(), tasks.size() * sizeof(ChunkTask));
  cudaError_t error = cudaSuccess;
  if (capturing) {
    // Recorded into the graph: each replay refills the table first. The pinned source lives as
    // long as the table, which the graph keeps.
    error = cudaMemcpyAsync(table->memory->device(), host, table->bytes, cudaMemcpyHostToDevice, stream);
    table->filled_in_capture = true;
  } else {
    error = table->memory->copy_eagerly(stream, table->bytes);
    if (error == cudaSuccess) error = cudaEventCreateWithFlags(&table->filled, cudaEventDisableTiming);
    if (error == cudaSuccess) error = cudaEventRecord(table->filled, stream);
    table->ordered_streams.push_back(stream_id);
    table->memory->used_on(stream);
  }
  if (error == cudaSuccess) *out = std::move(table);
  return error;
}

// The counter pair of this launch; -1 when the table has none left.
int counter_slot(Table& table, unsigned long long stream_id, bool capturing) {
  if (!capturing) {
    for (const auto& [id, slot] : table.eager_slots) {
      if (id == stream_id) return slot;
    }
  }
  if (table.slots_used == kCounterSlots) return -1;
  const int slot = table.slots_used++;
  if (!capturing) table.eager_slots.emplace_back(stream_id, slot);
  return slot;
}

}  // namespace

Table::~Table() {
  if (filled != nullptr) cudaEventDestroy(filled);
}

std::vector<uintptr_t> table_key(const std::vector<BucketSpec>& buckets, const std::vector<TensorEntry>& entries) {
  constexpr size_t kBucketWords = (sizeof(BucketSpec) + sizeof(uintptr_t) - 1) / sizeof(uintptr_t);
  std::vector<uintptr_t> key;
  key.reserve(1 + buckets.size() * kBucketWords + entries.size() * 6);
  key.push_back(buckets.size());
  for (const BucketSpec& b : buckets) {
    uintptr_t words[kBucketWords] = {};
    std::memcpy(words, &b, sizeof(BucketSpec));
    key.insert(key.end(), std::begin(words), std::end(words));
  }
  for (const TensorEntry& e : entries) {
    key.insert(key.end(), {reinterpret_cast<uintptr_t>(e.param), reinterpret_cast<uintptr_t>(e.grad)});
    for (void* state : e.state) key.push_back(reinterpret_cast<uintptr_t>(state));
    key.push_back(static_cast<uintptr_t>(e.numel) ^ (static_cast<uintptr_t>(e.bucket) << 48));
  }
  return key;
}

cudaError_t prepare_launch(TableSet& set, const std::vector<BucketSpec>& buckets,
                           const std::vector<TensorEntry>& entries, cudaStream_t stream, const AllocateTable& allocate,
                           LaunchTable* launch) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  unsigned long long capture_id = 0;
  cudaError_t error = cudaStreamGetCaptureInfo(stream, &status, &capture_id);
  if (error != cudaSuccess) return error;
  if (status == cudaStreamCaptureStatusInvalidated) return cudaErrorStreamCaptureInvalidated;
  const bool capturing = status == cudaStreamCaptureStatusActive;
  // Freeing destroys events and returns memory, which a capture is better left without.
  if (!capturing) free_tables_released_by_graphs();
  unsigned long long stream_id = 0;
  if ((error = cudaStreamGetId(stream, &stream_id)) != cudaSuccess) return error;
  std::vector<uintptr_t> key = table_key(buckets, entries);

  std::lock_guard<std::mutex> lock(set.mutex);
  const auto build = [&](std::vector<uintptr_t> table_key) {
    std::shared_ptr<Table> table;
    const cudaError_t built =
        build_table(std::move(table_key), buckets, entries, stream, stream_id, capturing, allocate, &table);
    if (built != cudaSuccess) return built;
    if (capturing) {
      table->capture = capture_id;
      if (set.current) release_later(std::move(set.current));  // freed after the capture
    }
    set.current = std::move(table);  // the old one lives on only in the graphs that read it
    ++set.tables_built;
    return cudaSuccess;
  };
  // A capture-filled table serves only the capture that filled it.
  const auto serves = [&](const Table& table) {
    if (!table.filled_in_capture) return true;
    return capturing && table.capture == capture_id;
  };
  if (!set.current || set.current->key != key || !serves(*set.current)) {
    if ((error = build(std::move(key))) != cudaSuccess) return error;
  }
  int slot = counter_slot(*set.current, stream_id, capturing);
  if (slot < 0) {
    // Every counter pair is taken (many streams or captures): the same content, a new table.
    if ((error = build(set.current->key)) != cudaSuccess) return error;
    slot = counter_slot(*set.current, stream_id, capturing);
  }
  Table& table = *set.current;
  if (capturing) {
    // An eagerly filled table: each replay waits for that fill (it ran long ago, mostly).
    if (!table.filled_in_capture) {
      if ((error = cudaStreamWaitEvent(stream, table.filled, cudaEventWaitExternal)) != cudaSuccess) return error;
    }
    if ((error = keep_for_graph(stream, set.current)) != cudaSuccess) return error;
  } else if (std::find(table.ordered_streams.begin(), table.ordered_streams.end(), stream_id) ==
             table.ordered_streams.end()) {
    if ((error = cudaStreamWaitEvent(stream, table.filled, 0)) != cudaSuccess) return error;
    table.ordered_streams.push_back(stream_id);
    table.memory->used_on(stream);
  }
  uint8_t* base = table.memory->device();
  launch->counters = reinterpret_cast<LaunchCounters*>(base) + slot;
  launch->buckets = reinterpret_cast<const BucketSpec*>(base + table.buckets_offset);
  launch->tensors = reinterpret_cast<const TensorEntry*>(base + table.entries_offset);
  launch->tasks = reinterpret_cast<const ChunkTask*>(base + table.tasks_offset);
  launch->num_tasks = table.num_tasks;
  return cudaSuccess;
}

size_t tables_awaiting_release() {
  Releases& r = releases();
  std::lock_guard<std::mutex> lock(r.mutex);
  return r.pending.size();
}

}  // namespace cuda
}  // namespace lrfused
