// The tensor tables of the step's launches (csrc/cuda/tensor_tables.cu, note [Tensor tables]),
// without torch: built and executed on the CPU under emulation by scripts/cuda_emulation_check.sh
// (CI), and on a GPU by benchmarks/gpu_suite.sh.
//
// A probe kernel reads what a launch would read (the task count, every entry's pointers, every
// task, the counter pair) and the tests compare it with what the call described:
//   * steady state builds nothing, on one stream, call after call;
//   * a changed pointer builds a new table and frees the old one, unless a graph reads it: then
//     the graph keeps it, replays read it, and it is freed once the graph is destroyed (on the
//     caller's thread, never on CUDA's);
//   * a table filled during a capture is never used eagerly, and a second launch of the same
//     capture reuses it;
//   * a table filled on one stream is read on another only after its fill (the fill is held back
//     behind a gate kernel; the other stream's launch must not finish before the gate opens);
//   * more than kCounterSlots captures: every launch has a counter pair of its own;
//   * a stream destroyed and its handle value given to a new stream: a new counter pair;
//   * a graph that outlives the table set (the optimizer's handle) still reads its table.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cuda/adam_step_kernel.cuh"
#include "cuda/launch.cuh"
#include "cuda/tensor_tables.cuh"
#include "test_support.h"

using namespace lrfused;
using namespace lrfused::cuda;
using namespace lrfused_test;

namespace {

// What the tables' memory did, for every test: live tables, the streams named in used_on, and
// whether any table was freed off the main thread. The memory comes from blocks allocated before
// the tests (so that no allocation runs while a gate kernel holds a stream) and is never reused
// (the glue frees in stream order through torch's allocator; never reusing is as safe).
struct Ledger {
  static constexpr size_t kBlockBytes = 4096;
  static constexpr int kBlocks = 128;
  int live = 0;
  int taken = 0;
  std::vector<cudaStream_t> used_on;
  bool freed_off_main_thread = false;
  uint8_t* device = nullptr;
  uint8_t* host = nullptr;
  std::thread::id main_thread = std::this_thread::get_id();
};
Ledger ledger;

class TestMemory final : public TableMemory {
 public:
  explicit TestMemory(size_t bytes) {
    if (bytes > Ledger::kBlockBytes || ledger.taken == Ledger::kBlocks) {
      std::fprintf(stderr, "the test's table memory is too small\n");
      std::exit(2);
    }
    device_ = ledger.device + ledger.taken * Ledger::kBlockBytes;
    host_ = ledger.host + ledger.taken * Ledger::kBlockBytes;
    ++ledger.taken;
    ++ledger.live;
  }
  ~TestMemory() override {
    --ledger.live;
    if (std::this_thread::get_id() != ledger.main_thread) ledger.freed_off_main_thread = true;
  }
  uint8_t* host() override { return host_; }
  uint8_t* device() override { return device_; }
  cudaError_t copy_eagerly(cudaStream_t stream, size_t bytes) override {
    return cudaMemcpyAsync(device_, host_, bytes, cudaMemcpyHostToDevice, stream);
  }
  void used_on(cudaStream_t stream) override { ledger.used_on.push_back(stream); }

 private:
  uint8_t* device_ = nullptr;
  uint8_t* host_ = nullptr;
};

const AllocateTable allocate = [](size_t bytes) -> std::unique_ptr<TableMemory> {
  return std::make_unique<TestMemory>(bytes);
};

// A call's buckets and entries. The pointers are never dereferenced: the probe only reads them.
struct Call {
  std::vector<BucketSpec> buckets;
  std::vector<TensorEntry> entries;
};

Call make_call(uintptr_t seed) {
  Call call;
  for (int b = 0; b < 2; ++b) {
    BucketSpec bucket{};
    bucket.group = b;
    bucket.momentum = 0.9;
    bucket.decay = 0.999;
    bucket.eps = 1e-8;
    bucket.weight_decay = 0.01 * (b + 1);
    bucket.element_type = static_cast<int32_t>(b == 0 ? ElementType::kFloat32 : ElementType::kBFloat16);
    call.buckets.push_back(bucket);
  }
  const int64_t sizes[] = {10, kChunkSize + 7, 5};  // 1 + 2 + 1 chunks
  for (int i = 0; i < 3; ++i) {
    const auto pointer = [&](int k) { return reinterpret_cast<void*>((seed << 20) + 0x1000 * (8 * i + k)); };
    call.entries.push_back({pointer(0), pointer(1), pointer(2), pointer(3), nullptr, sizes[i], 1, i == 2 ? 1 : 0});
  }
  return call;
}

// What a probe of `call`'s table must read: the task count, each entry's param, grad and numel,
// each bucket's weight decay bits, each task, then the counter pair (both zero).
std::vector<unsigned long long> expected(const Call& call) {
  std::vector<unsigned long long> out;
  int tasks = 0;
  for (const TensorEntry& e : call.entries) tasks += static_cast<int>((e.numel + kChunkSize - 1) / kChunkSize);
  out.push_back(tasks);
  for (const TensorEntry& e : call.entries) {
    out.insert(out.end(), {reinterpret_cast<uintptr_t>(e.param), reinterpret_cast<uintptr_t>(e.grad),
                           static_cast<unsigned long long>(e.numel)});
  }
  for (const BucketSpec& b : call.buckets) {
    unsigned long long bits;
    std::memcpy(&bits, &b.weight_decay, sizeof bits);
    out.push_back(bits);
  }
  for (size_t i = 0; i < call.entries.size(); ++i) {
    for (int64_t c = 0; c * kChunkSize < call.entries[i].numel; ++c) out.push_back((i << 32) | c);
  }
  out.insert(out.end(), {0, 0});
  return out;
}

constexpr int kProbeWords = 1 + 3 * 3 + 2 + 4 + 2;

__global__ void probe_table(LaunchTable table, int num_entries, int num_buckets, unsigned long long* out,
                            volatile int* done) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int k = 0;
  out[k++] = static_cast<unsigned long long>(table.num_tasks);
  for (int i = 0; i < num_entries; ++i) {
    out[k++] = reinterpret_cast<uintptr_t>(table.tensors[i].param);
    out[k++] = reinterpret_cast<uintptr_t>(table.tensors[i].grad);
    out[k++] = static_cast<unsigned long long>(table.tensors[i].numel);
  }
  for (int b = 0; b < num_buckets; ++b) {
    unsigned long long bits;
    memcpy(&bits, &table.buckets[b].weight_decay, sizeof bits);
    out[k++] = bits;
  }
  for (int t = 0; t < table.num_tasks; ++t) {
    out[k++] = (static_cast<unsigned long long>(table.tasks[t].tensor) << 32) |
               static_cast<unsigned int>(table.tasks[t].chunk);
  }
  out[k++] = table.counters->blocks_done;
  out[k++] = table.counters->next_task;
  if (done != nullptr) {
    __threadfence_system();
    *done = 1;
  }
}

// A stream held back: nothing queued on it after hold() runs before release(). On a GPU a kernel
// spins until the host opens its gate; under the emulation, whose streams run in rounds, the
// emulation keeps the stream's work (lrfused_emulation::hold).
struct HeldStream {
  cudaStream_t stream;
  volatile int* gate = nullptr;
};

#if !defined(LRFUSED_CUDA_EMULATION)
__global__ void wait_for_gate(volatile int* gate) {
  while (*gate == 0) {
  }
}
#endif

HeldStream hold(cudaStream_t stream) {
  HeldStream held{stream};
#if defined(LRFUSED_CUDA_EMULATION)
  lrfused_emulation::hold(stream);
#else
  int* gate = nullptr;
  CHECK_CUDA(cudaMallocHost(reinterpret_cast<void**>(&gate), sizeof(int)));
  held.gate = gate;
  *held.gate = 0;
  LRFUSED_LAUNCH(wait_for_gate, 1, 1, 0, stream, held.gate);
  CHECK_CUDA(cudaGetLastError());
#endif
  return held;
}

void release(HeldStream& held) {
#if defined(LRFUSED_CUDA_EMULATION)
  lrfused_emulation::release(held.stream);
#else
  *held.gate = 1;
  CHECK_CUDA(cudaStreamSynchronize(held.stream));
  CHECK_CUDA(cudaFreeHost(const_cast<int*>(held.gate)));
#endif
}

// A device buffer for one probe.
unsigned long long* probe_buffer() {
  unsigned long long* out = nullptr;
  CHECK_CUDA(cudaMalloc(&out, kProbeWords * sizeof(unsigned long long)));
  CHECK_CUDA(cudaMemset(out, 0xff, kProbeWords * sizeof(unsigned long long)));
  return out;
}

void launch_probe(const LaunchTable& table, const Call& call, unsigned long long* out, cudaStream_t stream,
                  volatile int* done = nullptr) {
  LRFUSED_LAUNCH(probe_table, 1, 1, 0, stream, table, static_cast<int>(call.entries.size()),
                 static_cast<int>(call.buckets.size()), out, done);
  CHECK_CUDA(cudaGetLastError());
}

void expect_probe(unsigned long long* out, const Call& call, const std::string& what) {
  const std::vector<unsigned long long> got = host_copy(out, kProbeWords);
  expect(got == expected(call), what + ": the launch reads the call's table");
}

LaunchTable prepare(TableSet& set, const Call& call, cudaStream_t stream) {
  LaunchTable table{};
  CHECK_CUDA(prepare_launch(set, call.buckets, call.entries, stream, allocate, &table));
  return table;
}

cudaGraphExec_t end_capture(cudaStream_t stream) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  CHECK_CUDA(cudaGraphDestroy(graph));  // the instantiated graph keeps its own references
  return exec;
}

cudaStream_t new_stream() {
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return stream;
}

void steady_state_and_changed_pointers() {
  cudaStream_t stream = new_stream();
  TableSet set;
  const Call a = make_call(1);
  const int live_before = ledger.live;
  const size_t used_before = ledger.used_on.size();
  const LaunchTable first = prepare(set, a, stream);
  bool same = true;
  for (int step = 0; step < 50; ++step) {
    const LaunchTable again = prepare(set, a, stream);
    same = same && again.counters == first.counters && again.tensors == first.tensors;
  }
  expect(set.tables_built == 1 && same, "steady state: one table, the same counter pair, call after call");
  expect(ledger.used_on.size() - used_before == 1, "steady state: the stream is ordered after the fill once");
  unsigned long long* out = probe_buffer();
  launch_probe(first, a, out, stream);
  CHECK_CUDA(cudaStreamSynchronize(stream));
  expect_probe(out, a, "steady state");

  Call b = a;
  b.entries[1].grad = reinterpret_cast<void*>(0x7777000);
  const LaunchTable changed = prepare(set, b, stream);
  expect(set.tables_built == 2, "a changed grad pointer builds a new table");
  expect(ledger.live == live_before + 1, "the replaced table is freed (no graph reads it)");
  launch_probe(changed, b, out, stream);
  CHECK_CUDA(cudaStreamSynchronize(stream));
  expect_probe(out, b, "after a changed pointer");
  CHECK_CUDA(cudaStreamDestroy(stream));
}

void graph_keeps_its_table() {
  cudaStream_t eager = new_stream(), capture = new_stream();
  TableSet set;
  const Call a = make_call(2);
  Call b = a;
  b.entries[0].param = reinterpret_cast<void*>(0x5555000);
  const int live_before = ledger.live;
  const LaunchTable eager_launch = prepare(set, a, eager);
  unsigned long long* out = probe_buffer();
  CHECK_CUDA(cudaStreamSynchronize(eager));
  CHECK_CUDA(cudaStreamBeginCapture(capture, cudaStreamCaptureModeGlobal));
  const LaunchTable captured = prepare(set, a, capture);
  launch_probe(captured, a, out, capture);
  cudaGraphExec_t exec = end_capture(capture);
  expect(set.tables_built == 1, "a capture reuses the eagerly filled table");
  expect(captured.counters != eager_launch.counters, "a captured launch has a counter pair of its own");

  prepare(set, b, eager);  // replaces the table the graph reads
  expect(set.tables_built == 2 && ledger.live == live_before + 2, "a table a graph reads is kept when replaced");
  CHECK_CUDA(cudaGraphLaunch(exec, capture));
  CHECK_CUDA(cudaStreamSynchronize(capture));
  expect_probe(out, a, "a replay after the table was replaced");
  CHECK_CUDA(cudaGraphExecDestroy(exec));
  expect(tables_awaiting_release() == 1, "the destroyed graph's table waits to be freed");
  free_tables_released_by_graphs();
  expect(ledger.live == live_before + 1 && tables_awaiting_release() == 0, "then it is freed");
  expect(!ledger.freed_off_main_thread, "no table is freed on CUDA's callback thread");
  CHECK_CUDA(cudaStreamDestroy(eager));
  CHECK_CUDA(cudaStreamDestroy(capture));
}

void capture_filled_table_is_never_used_eagerly() {
  cudaStream_t eager = new_stream(), capture = new_stream();
  TableSet set;
  const Call a = make_call(3);
  unsigned long long* in_graph = probe_buffer();
  unsigned long long* in_graph_again = probe_buffer();
  unsigned long long* out = probe_buffer();
  CHECK_CUDA(cudaStreamBeginCapture(capture, cudaStreamCaptureModeGlobal));
  const LaunchTable first = prepare(set, a, capture);
  launch_probe(first, a, in_graph, capture);
  const LaunchTable second = prepare(set, a, capture);
  launch_probe(second, a, in_graph_again, capture);
  cudaGraphExec_t exec = end_capture(capture);
  expect(set.tables_built == 1 && first.tensors == second.tensors && first.counters != second.counters,
         "two launches of one capture share the table it filled, each with its own counter pair");

  const LaunchTable eager_launch = prepare(set, a, eager);  // before any replay: the table holds nothing
  expect(set.tables_built == 2 && eager_launch.tensors != first.tensors,
         "an eager call does not use a table filled during a capture");
  launch_probe(eager_launch, a, out, eager);
  CHECK_CUDA(cudaStreamSynchronize(eager));
  expect_probe(out, a, "eager, after a capture filled a table");
  CHECK_CUDA(cudaGraphLaunch(exec, capture));
  CHECK_CUDA(cudaStreamSynchronize(capture));
  expect_probe(in_graph, a, "a replay refills the capture's table");
  expect_probe(in_graph_again, a, "the capture's second launch");
  CHECK_CUDA(cudaGraphExecDestroy(exec));
  free_tables_released_by_graphs();
  CHECK_CUDA(cudaStreamDestroy(eager));
  CHECK_CUDA(cudaStreamDestroy(capture));
}

// A fill held back on one stream: a launch of the same table on another stream must wait for it.
void second_stream_waits_for_the_fill() {
  cudaStream_t filler = new_stream(), reader = new_stream();
  int* done = nullptr;  // set by the reader's probe
  CHECK_CUDA(cudaMallocHost(reinterpret_cast<void**>(&done), sizeof(int)));
  volatile int* finished = done;
  *finished = 0;
  unsigned long long* out = probe_buffer();
  TableSet set;
  const Call a = make_call(4);
  const size_t used_before = ledger.used_on.size();
  HeldStream held = hold(filler);
  prepare(set, a, filler);  // the fill queues behind the gate
  const LaunchTable launch = prepare(set, a, reader);
  launch_probe(launch, a, out, reader, finished);
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
  while (*finished == 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  expect(*finished == 0, "a launch on another stream does not run before the table's fill");
  release(held);
  CHECK_CUDA(cudaDeviceSynchronize());
  expect(*finished == 1, "it runs after the fill");
  expect_probe(out, a, "a launch on another stream after the fill");
  expect(set.tables_built == 1, "two streams share one table");
  prepare(set, a, reader);
  expect(ledger.used_on.size() - used_before == 2, "each stream is ordered after the fill once");
  CHECK_CUDA(cudaDeviceSynchronize());
  CHECK_CUDA(cudaFreeHost(done));
  for (cudaStream_t s : {filler, reader}) CHECK_CUDA(cudaStreamDestroy(s));
}

void more_captures_than_counter_pairs() {
  cudaStream_t eager = new_stream(), capture = new_stream();
  TableSet set;
  const Call a = make_call(5);
  std::set<LaunchCounters*> pairs = {prepare(set, a, eager).counters};
  CHECK_CUDA(cudaStreamSynchronize(eager));
  constexpr int kCaptures = kCounterSlots + 8;
  std::vector<cudaGraphExec_t> graphs;
  std::vector<unsigned long long*> outs;
  for (int k = 0; k < kCaptures; ++k) {
    outs.push_back(probe_buffer());
    CHECK_CUDA(cudaStreamBeginCapture(capture, cudaStreamCaptureModeGlobal));
    const LaunchTable launch = prepare(set, a, capture);
    launch_probe(launch, a, outs.back(), capture);
    graphs.push_back(end_capture(capture));
    pairs.insert(launch.counters);
  }
  expect(pairs.size() == kCaptures + 1, "every captured launch has a counter pair of its own (" +
                                            std::to_string(pairs.size()) + " pairs for " +
                                            std::to_string(kCaptures + 1) + " launches)");
  expect(set.tables_built > 1, "the counter pairs ran out: the same content went into a new table");
  for (cudaGraphExec_t exec : graphs) CHECK_CUDA(cudaGraphLaunch(exec, capture));
  CHECK_CUDA(cudaStreamSynchronize(capture));
  int right = 0;
  for (unsigned long long* out : outs) right += host_copy(out, kProbeWords) == expected(a) ? 1 : 0;
  expect(right == kCaptures,
         "every replay reads its table (" + std::to_string(right) + " of " + std::to_string(kCaptures) + ")");
  for (cudaGraphExec_t exec : graphs) CHECK_CUDA(cudaGraphExecDestroy(exec));
  free_tables_released_by_graphs();
  CHECK_CUDA(cudaStreamDestroy(eager));
  CHECK_CUDA(cudaStreamDestroy(capture));
}

void reused_stream_handle_gets_a_new_pair() {
  TableSet set;
  const Call a = make_call(6);
  cudaStream_t first = new_stream();
  const LaunchTable before = prepare(set, a, first);
  CHECK_CUDA(cudaStreamDestroy(first));  // its launch may still be running
  cudaStream_t second = new_stream();
  const LaunchTable after = prepare(set, a, second);
  std::printf("  the new stream %s the destroyed one's handle value\n", second == first ? "reuses" : "does not reuse");
  expect(after.counters != before.counters, "a new stream never shares the counter pair of a destroyed one");
  CHECK_CUDA(cudaDeviceSynchronize());
  CHECK_CUDA(cudaStreamDestroy(second));
}

void graph_outlives_the_table_set() {
  cudaStream_t capture = new_stream();
  const Call a = make_call(7);
  const int live_before = ledger.live;
  unsigned long long* out = probe_buffer();
  auto set = std::make_unique<TableSet>();
  CHECK_CUDA(cudaStreamBeginCapture(capture, cudaStreamCaptureModeGlobal));
  launch_probe(prepare(*set, a, capture), a, out, capture);
  cudaGraphExec_t exec = end_capture(capture);
  set.reset();  // the optimizer and its handle are gone; the graph is not
  expect(ledger.live == live_before + 1, "the graph keeps its table after the set is gone");
  CHECK_CUDA(cudaGraphLaunch(exec, capture));
  CHECK_CUDA(cudaStreamSynchronize(capture));
  expect_probe(out, a, "a replay after the set is gone");
  CHECK_CUDA(cudaGraphExecDestroy(exec));
  free_tables_released_by_graphs();
  expect(ledger.live == live_before, "the table is freed with its last graph");
  CHECK_CUDA(cudaStreamDestroy(capture));
}

}  // namespace

int main() {
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&ledger.device), Ledger::kBlocks * Ledger::kBlockBytes));
  CHECK_CUDA(cudaMallocHost(reinterpret_cast<void**>(&ledger.host), Ledger::kBlocks * Ledger::kBlockBytes));
  const struct {
    const char* name;
    void (*run)();
  } tests[] = {
      {"steady state and changed pointers", steady_state_and_changed_pointers},
      {"a graph keeps its table", graph_keeps_its_table},
      {"a capture-filled table is never used eagerly", capture_filled_table_is_never_used_eagerly},
      {"a second stream waits for the fill", second_stream_waits_for_the_fill},
      {"more captures than counter pairs", more_captures_than_counter_pairs},
      {"a reused stream handle gets a new counter pair", reused_stream_handle_gets_a_new_pair},
      {"a graph outlives the table set", graph_outlives_the_table_set},
  };
  for (const auto& test : tests) {
    const int before = failures;
    test.run();
    std::printf("%s %s\n", failures == before ? "ok  " : "FAIL", test.name);
  }
  CHECK_CUDA(cudaDeviceSynchronize());
  CHECK_CUDA(cudaFree(ledger.device));
  CHECK_CUDA(cudaFreeHost(ledger.host));
  std::printf("%s: %d failed checks\n", failures == 0 ? "PASSED" : "FAILED", failures);
  return failures == 0 ? 0 : 1;
}
