// What the op hands to the CPU update loop: raw pointers of one bucket of tensors, laid end to
// end (offsets are the prefix sums of their sizes), and the per-call scalars.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <vector>

#include "../common/adam_math.h"

namespace lrfused {

struct CpuBucket {
  c10::ScalarType dtype;
  bool amsgrad;
  bool decoupled;
  std::vector<void*> params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs;
  std::vector<int64_t> offsets{0};
};

struct StepConfig {
  AdamScalars scalars;
  bool maximize;
  bool has_weight_decay;
  const float* grad_scale;  // null without AMP
};

namespace cpu_default {
void update_bucket_entry(const CpuBucket& bucket, const StepConfig& config);
}
namespace cpu_avx2 {
void update_bucket_entry(const CpuBucket& bucket, const StepConfig& config);
}

}  // namespace lrfused
