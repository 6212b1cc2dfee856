// lrfused::fused_adam_ on CUDA: argument checks, the tensor table, and one launch on the current
// stream (the kernel is csrc/cuda/fused_adam_kernel.cu).
//
// note [Tensor tables]
// The kernel reads its tensors from a table in device memory. Building it means one host-to-device
// copy, so tables are cached by the exact list of pointers and sizes: in a training loop the
// parameters and states never move and the caching allocator hands the gradients the same
// addresses step after step, so the table is built once and every later step is a single kernel
// launch with no copy at all. When a pointer does change the table is rebuilt with an
// asynchronous copy from pinned memory on the current stream (still no sync). The cache entry
// keeps its pinned source alive, so a copy recorded into a CUDA graph stays valid for every replay.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstring>
#include <list>
#include <mutex>
#include <vector>

#include "../ops.h"
#include "fused_adam_kernel.cuh"

namespace lrfused {
namespace {

using cuda::ChunkTask;
using cuda::TensorEntry;

struct TableKey {
  int device;
  std::vector<uintptr_t> words;  // every pointer and size of the call, in order
  bool operator==(const TableKey& other) const { return device == other.device && words == other.words; }
};

struct Table {
  TableKey key;
  at::Tensor pinned;   // host source of the last copy (kept alive, see the note)
  at::Tensor device;   // [blocks_done counter | TensorEntry[] | ChunkTask[]]
  int32_t num_tasks;
};

constexpr size_t kMaxCachedTables = 16;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

class TableCache {
 public:
  // The device table for these tensors on the current stream, built if it is not cached.
  const Table& get(const std::vector<TensorEntry>& entries, int device) {
    TableKey key{device, {}};
    key.words.reserve(entries.size() * 6);
    for (const TensorEntry& e : entries) {
      key.words.insert(key.words.end(), {reinterpret_cast<uintptr_t>(e.param), reinterpret_cast<uintptr_t>(e.grad),
                                         reinterpret_cast<uintptr_t>(e.exp_avg),
                                         reinterpret_cast<uintptr_t>(e.exp_avg_sq),
                                         reinterpret_cast<uintptr_t>(e.max_exp_avg_sq),
                                         static_cast<uintptr_t>(e.numel)});
    }
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = tables_.begin(); it != tables_.end(); ++it) {
      if (it->key == key) {
        tables_.splice(tables_.begin(), tables_, it);  // most recently used first
        return tables_.front();
      }
    }
    tables_.push_front(build(std::move(key), entries));
    if (tables_.size() > kMaxCachedTables) tables_.pop_back();
    return tables_.front();
  }

 private:
  static Table build(TableKey key, const std::vector<TensorEntry>& entries) {
    std::vector<ChunkTask> tasks;
    for (size_t i = 0; i < entries.size(); ++i) {
      const int64_t chunks = (entries[i].numel + cuda::kChunkSize - 1) / cuda::kChunkSize;
      for (int64_t c = 0; c < chunks; ++c) {
        tasks.push_back({static_cast<int32_t>(i), static_cast<int32_t>(c)});
      }
    }
    const size_t entries_offset = 16;  // the counter, padded to the entries' alignment
    const size_t tasks_offset = round_up(entries_offset + entries.size() * sizeof(TensorEntry), 16);
    const size_t bytes = tasks_offset + tasks.size() * sizeof(ChunkTask);
    Table table{std::move(key), at::empty({static_cast<int64_t>(bytes)}, at::dtype(at::kByte).pinned_memory(true)),
                at::Tensor(), static_cast<int32_t>(tasks.size())};
    uint8_t* host = table.pinned.data_ptr<uint8_t>();
    std::memset(host, 0, entries_offset);
    std::memcpy(host + entries_offset, entries.data(), entries.size() * sizeof(TensorEntry));
    std::memcpy(host + tasks_offset, tasks.data(), tasks.size() * sizeof(ChunkTask));
    table.device = at::empty({static_cast<int64_t>(bytes)},
                             at::dtype(at::kByte).device(at::kCUDA, static_cast<c10::DeviceIndex>(table.key.device)));
    // Through torch's copy, so that the pinned block is not reused before the copy has run.
    table.device.copy_(table.pinned, /*non_blocking=*/true);
    return table;
  }

  std::mutex mutex_;
  std::list<Table> tables_;
};

TableCache& table_cache() {
  static TableCache cache;
  return cache;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % cuda::kVectorBytes == 0; }

void fused_adam_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                     at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, const at::Tensor& step,
                     const std::optional<at::Tensor>& clock, const at::Tensor& schedule, double beta1, double beta2,
                     double eps, double weight_decay, bool decoupled_weight_decay, bool amsgrad, bool maximize,
                     const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const FusedAdamArgs args{params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, clock, schedule,
                           beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize,
                           grad_scale, found_inf};
  check_fused_adam_args(args);
  // The program's structure is checked where it is built (the Python encoder validates it with
  // the CPU op before uploading); reading it back here would cost a sync on every step.
  if (params.empty()) {
    return;
  }
  const c10::cuda::CUDAGuard guard(params[0].device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const GradsInParamLayout laid_out_grads(params, grads);

  std::vector<TensorEntry> entries;
  entries.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    TensorEntry e{params[i].data_ptr(), laid_out_grads.tensors()[i].data_ptr(), exp_avgs[i].data_ptr(),
                  exp_avg_sqs[i].data_ptr(), amsgrad ? max_exp_avg_sqs[i].data_ptr() : nullptr, params[i].numel(),
                  0, 0};
    e.aligned = aligned16(e.param) && aligned16(e.grad) && aligned16(e.exp_avg) && aligned16(e.exp_avg_sq) &&
                (!amsgrad || aligned16(e.max_exp_avg_sq));
    entries.push_back(e);
  }
  if (entries.empty()) {
    // Only empty tensors: nothing to update, but the step still counts (unless AMP skips it).
    if (found_inf.has_value()) {
      step.add_((found_inf->eq(0)).to(at::kLong));
    } else {
      step.add_(1);
    }
    return;
  }

  const Table& table = table_cache().get(entries, params[0].get_device());
  uint8_t* base = table.device.data_ptr<uint8_t>();
  cuda::LaunchArgs launch{};
  launch.blocks_done = reinterpret_cast<unsigned int*>(base);
  launch.tensors = reinterpret_cast<const TensorEntry*>(base + 16);
  launch.tasks = reinterpret_cast<const ChunkTask*>(
      base + round_up(16 + entries.size() * sizeof(TensorEntry), 16));
  launch.num_tasks = table.num_tasks;
  launch.step = step.data_ptr<int64_t>();
  launch.clock = clock.has_value() ? clock->data_ptr<int64_t>() : nullptr;
  launch.schedule = schedule.data_ptr<double>();
  launch.beta1 = beta1;
  launch.beta2 = beta2;
  launch.eps = eps;
  launch.weight_decay = weight_decay;
  launch.maximize = maximize;
  launch.grad_scale = grad_scale.has_value() ? grad_scale->data_ptr<float>() : nullptr;
  launch.found_inf = found_inf.has_value() ? found_inf->data_ptr<float>() : nullptr;

  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int num_blocks = std::min<int>(table.num_tasks, sms * cuda::kMinBlocksPerSM * 8);
  cuda::ElementType type = cuda::ElementType::kFloat32;
  if (params[0].scalar_type() == at::kHalf) type = cuda::ElementType::kFloat16;
  if (params[0].scalar_type() == at::kBFloat16) type = cuda::ElementType::kBFloat16;
  C10_CUDA_CHECK(cuda::launch_fused_adam(type, amsgrad, decoupled_weight_decay, launch, num_blocks, stream));

  if (grad_scale.has_value()) {
    laid_out_grads.write_back(grads);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(lrfused, CUDA, m) {
  m.impl("fused_adam_", &fused_adam_cuda);
}

}  // namespace lrfused
