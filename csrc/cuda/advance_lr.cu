// lrfused::advance_lr_ on CUDA: argument checks and one single-thread launch on the current stream
// (no sync, no copy, so a captured scheduler step replays from the device clock). It mirrors
// csrc/cpu/advance_lr.cpp line for line on purpose: the rule math is shared (common/lr_step.h),
// only the way each backend reaches its memory differs.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "../ops.h"
#include "advance_lr_kernel.cuh"

namespace lrfused {
namespace {

void advance_lr_cuda(const at::Tensor& groups, const at::Tensor& clock, const at::Tensor& rules,
                     std::optional<int64_t> epoch) {
  const int64_t group_count = check_advance_lr_args(groups, clock, rules);
  TORCH_CHECK(!epoch.has_value() || *epoch >= 0, "advance_lr_: epoch must be non-negative, got ", *epoch);
  const c10::cuda::CUDAGuard guard(groups.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(groups.device().index()).stream();
  C10_CUDA_CHECK(cuda::launch_advance_lr(rules.data_ptr<double>(), group_count, groups.data_ptr<double>(),
                                         clock.data_ptr<int64_t>(), epoch.has_value() ? *epoch : -1, stream));
}

}  // namespace

TORCH_LIBRARY_IMPL(lrfused, CUDA, m) { m.impl("advance_lr_", &advance_lr_cuda); }

}  // namespace lrfused
