// The CUDA kernel of lrfused::advance_lr_ (one scheduler step on the device), free of torch so
// that CI compiles it with nvcc alone; the torch glue is csrc/cuda/advance_lr.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace lrfused {
namespace cuda {

// One thread applies every group's rule (a handful of float64 operations per group) and moves the
// clock; `epoch < 0` means "one step from the clock". The rules were validated on the host.
cudaError_t launch_advance_lr(const double* rules, int64_t group_count, double* groups, int64_t* clock, int64_t epoch,
                              cudaStream_t stream);

}  // namespace cuda
}  // namespace lrfused
