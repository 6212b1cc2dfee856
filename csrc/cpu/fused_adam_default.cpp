// The update loop for any CPU (at::vec's portable Vectorized).
#define LRFUSED_CPU_VARIANT cpu_default
#include "fused_adam_kernel.h"

namespace lrfused::cpu_default {
void update_bucket_entry(const CpuBucket& bucket, const StepConfig& config) {
  update_bucket(bucket, config);
}
}  // namespace lrfused::cpu_default
