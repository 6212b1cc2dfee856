// The step on CUDA (note [One op per step]): the tensor tables and one launch on the current stream
// (the kernel is csrc/cuda/adam_step_kernel.cu); the ops gather and check their arguments in
// csrc/step_ops.cpp and hand the call to this runner. Only c10's CUDA headers are included:
// ATen/cuda/CUDAContext.h would pull in the cuBLAS, cuSPARSE and cuSOLVER headers, which a CUDA
// toolkit need not have.
//
// The tables the kernel reads (building, keying, keeping and ordering them on streams) are
// torch-free: csrc/cuda/tensor_tables.cu, note [Tensor tables]. This file gives them memory from
// torch's caching allocators and keeps a TableSet under each op call's handle.
#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "../handle.h"
#include "../ops.h"
#include "adam_step_kernel.cuh"
#include "tensor_tables.cuh"

namespace lrfused {
namespace {

// A table's memory from torch's caching allocators: device memory freed in the order of the
// streams that read it (recordStream), pinned memory kept from reuse until its copy ran.
class TorchTableMemory final : public cuda::TableMemory {
 public:
  TorchTableMemory(size_t bytes, int device) : device_index_(static_cast<c10::DeviceIndex>(device)) {
    {
      // A pinned allocation may call cudaHostAlloc, which a capture in the default (global) mode
      // refuses from this thread; it has nothing to do with the captured work.
      c10::cuda::CUDAStreamCaptureModeGuard relaxed(cudaStreamCaptureModeRelaxed);
      pinned_ = at::empty({static_cast<int64_t>(bytes)}, at::dtype(at::kByte).pinned_memory(true));
    }
    device_ = at::empty({static_cast<int64_t>(bytes)}, at::dtype(at::kByte).device(at::kCUDA, device_index_));
  }

  uint8_t* host() override { return pinned_.data_ptr<uint8_t>(); }
  uint8_t* device() override { return device_.data_ptr<uint8_t>(); }

  cudaError_t copy_eagerly(cudaStream_t stream, size_t /*bytes*/) override {
    // Through torch's copy on the current stream (the launch's), which records the pinned block's
    // use so that it is not handed out again before the copy ran.
    TORCH_INTERNAL_ASSERT(c10::cuda::getCurrentCUDAStream(device_index_).stream() == stream);
    device_.copy_(pinned_, /*non_blocking=*/true);
    return cudaSuccess;
  }

  void used_on(cudaStream_t stream) override {
    c10::cuda::CUDACachingAllocator::recordStream(device_.storage().data_ptr(),
                                                  c10::cuda::getStreamFromExternal(stream, device_index_));
  }

 private:
  c10::DeviceIndex device_index_;
  at::Tensor pinned_;
  at::Tensor device_;
};

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
    const size_t pack = pack_bytes(static_cast<ElementType>(bucket.element_type));
    TensorEntry e = t;
    // Every array the kernel reads (a state the tensor does not have is null, and not read).
    e.aligned = aligned_to(e.param, pack) && aligned_to(e.grad, pack);
    for (void* state : e.state) e.aligned = e.aligned && (state == nullptr || aligned_to(state, pack));
    entries.push_back(e);
  }

  // Without a handle (a direct call of the op) the set lives for this call only; a graph that
  // captured the call still keeps its table (note [Tensor tables]).
  std::shared_ptr<void> local;
  std::shared_ptr<void>& slot = state != nullptr ? *state : local;
  if (!slot) slot = std::make_shared<cuda::TableSet>();
  cuda::TableSet& set = *std::static_pointer_cast<cuda::TableSet>(slot);
  const cuda::AllocateTable allocate = [device](size_t bytes) -> std::unique_ptr<cuda::TableMemory> {
    return std::make_unique<TorchTableMemory>(bytes, device);
  };
  cuda::LaunchTable table{};
  C10_CUDA_CHECK(cuda::prepare_launch(set, call.buckets, entries, stream, allocate, &table));
  cuda::LaunchArgs launch{};
  launch.counters = table.counters;
  launch.buckets = table.buckets;
  launch.tensors = table.tensors;
  launch.tasks = table.tasks;
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
