// See advance_lr_kernel.cuh and note [Scheduler steps on the device] (csrc/common/lr_step.h).
#include "advance_lr_kernel.cuh"

#include "../common/lr_step.h"
#include "launch.cuh"

namespace lrfused {
namespace cuda {

namespace {

__global__ void advance_lr_kernel(const double* rules, int64_t group_count, double* groups, int64_t* clock,
                                  int64_t epoch) {
  const bool explicit_epoch = epoch >= 0;
  const int64_t t = explicit_epoch ? epoch : *clock + 1;
  apply_rules(rules, group_count, groups, t, explicit_epoch);
  *clock = t;
}

}  // namespace

cudaError_t launch_advance_lr(const double* rules, int64_t group_count, double* groups, int64_t* clock, int64_t epoch,
                              cudaStream_t stream) {
  LRFUSED_LAUNCH(advance_lr_kernel, 1, 1, 0, stream, rules, group_count, groups, clock, epoch);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace lrfused
