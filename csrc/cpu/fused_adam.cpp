// lrfused::fused_adam_ on the CPU.
//
// note [One parallel region per call]
// torch's fused CPU Adam opens one at::parallel_for per tensor, so a model of many small tensors
// pays the thread-pool hand-off thousands of times per step. Here all the tensors of a call are
// laid end to end in one index space and a single parallel_for splits that space; each worker
// finds its first tensor by binary search over the prefix sums of the sizes.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../common/step_scalars.h"
#include "../ops.h"
#include "cpu_bucket.h"

namespace lrfused {

namespace {

// note [CPU instruction sets]
// The update loop (fused_adam_kernel.h) is compiled twice: for any x86-64/ARM CPU, and with AVX2
// and FMA enabled (fused_adam_avx2.cpp), as ATen compiles its own CPU kernels once per
// capability. The AVX2 build is chosen at run time when the CPU has AVX2 and FMA, so a wheel
// runs everywhere and is as fast as torch's kernels where it can be. -ffp-contract=off keeps
// both variants to the same roundings (no fused multiply-adds), those of torch's Adam.
void update_bucket(const CpuBucket& bucket, const StepConfig& config) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (has_avx2) {
    cpu_avx2::update_bucket_entry(bucket, config);
    return;
  }
#endif
  cpu_default::update_bucket_entry(bucket, config);
}

void fused_adam_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, const at::Tensor& step,
                    const std::optional<at::Tensor>& clock, const at::Tensor& schedule, double beta1, double beta2,
                    double eps, double weight_decay, bool decoupled_weight_decay, bool amsgrad, bool maximize,
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                    const std::optional<at::Tensor>& invalid_steps, const std::optional<at::Tensor>& /*handle*/) {
  const FusedAdamArgs args{params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, clock, schedule,
                           beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize,
                           grad_scale, found_inf, invalid_steps};
  check_fused_adam_args(args);
  check_schedule_program(schedule);
  if (params.empty()) {
    return;
  }
  if (found_inf.has_value() && found_inf->item<float>() != 0.0f) {
    return;  // an AMP overflow: nothing changes, not even the step counter
  }

  int64_t* step_ptr = step.data_ptr<int64_t>();
  const int64_t t = clock.has_value() ? clock->item<int64_t>() : *step_ptr;
  const StepScalars scalars = step_scalars(schedule.data_ptr<double>(), t, beta1, beta2, eps, weight_decay, *step_ptr);
  if (!scalars.usable) {
    // note [Unusable schedule values]: skipped and counted, as on CUDA, where raising needs a sync.
    if (invalid_steps.has_value()) {
      invalid_steps->add_(1);
    }
    return;
  }

  const WorkingLayout laid_out(args);

  StepConfig config;
  config.scalars = scalars.scalars;
  config.maximize = maximize;
  config.has_weight_decay = weight_decay != 0.0;
  config.grad_scale = grad_scale.has_value() ? grad_scale->data_ptr<float>() : nullptr;

  CpuBucket bucket{params[0].scalar_type(), amsgrad, decoupled_weight_decay};
  for (size_t i = 0; i < params.size(); ++i) {
    bucket.params.push_back(laid_out.param(i));
    bucket.grads.push_back(laid_out.grad(i));
    bucket.exp_avgs.push_back(laid_out.exp_avg(i));
    bucket.exp_avg_sqs.push_back(laid_out.exp_avg_sq(i));
    bucket.max_exp_avg_sqs.push_back(amsgrad ? laid_out.max_exp_avg_sq(i) : nullptr);
    bucket.offsets.push_back(bucket.offsets.back() + params[i].numel());
  }
  update_bucket(bucket, config);

  laid_out.write_back();
  *step_ptr += 1;
}

}  // namespace

TORCH_LIBRARY_IMPL(lrfused, CPU, m) {
  m.impl("fused_adam_", &fused_adam_cpu);
}

}  // namespace lrfused
