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

#include "../common/adam_math.h"
#include "../common/lr_schedule.h"
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
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const FusedAdamArgs args{params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, clock, schedule,
                           beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize,
                           grad_scale, found_inf};
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
  const ScheduleValue value = evaluate_schedule(schedule.data_ptr<double>(), t);
  // A finite negative lr is what torch computes for some chains (a cosine with eta_min after a
  // decay to zero): it is followed, as torch follows it. Non-finite values never are.
  TORCH_CHECK(std::isfinite(value.lr), "fused_adam_: the schedule gives lr=", value.lr,
              " at clock ", t, " (a tabulated schedule asked past what was uploaded?)");
  const double step_beta1 = std::isnan(value.beta1) ? beta1 : value.beta1;
  TORCH_CHECK(step_beta1 >= 0.0 && step_beta1 < 1.0, "fused_adam_: the schedule gives beta1=", step_beta1,
              " at clock ", t);

  const GradsInParamLayout laid_out_grads(params, grads);

  StepConfig config;
  config.scalars = make_adam_scalars(value.lr, step_beta1, beta2, eps, weight_decay, *step_ptr + 1);
  config.maximize = maximize;
  config.has_weight_decay = weight_decay != 0.0;
  config.grad_scale = grad_scale.has_value() ? grad_scale->data_ptr<float>() : nullptr;

  CpuBucket bucket{params[0].scalar_type(), amsgrad, decoupled_weight_decay};
  for (size_t i = 0; i < params.size(); ++i) {
    bucket.params.push_back(params[i].data_ptr());
    bucket.grads.push_back(laid_out_grads.tensors()[i].data_ptr());
    bucket.exp_avgs.push_back(exp_avgs[i].data_ptr());
    bucket.exp_avg_sqs.push_back(exp_avg_sqs[i].data_ptr());
    bucket.max_exp_avg_sqs.push_back(amsgrad ? max_exp_avg_sqs[i].data_ptr() : nullptr);
    bucket.offsets.push_back(bucket.offsets.back() + params[i].numel());
  }
  update_bucket(bucket, config);

  if (grad_scale.has_value()) {
    laid_out_grads.write_back(grads);
  }
  *step_ptr += 1;
}

}  // namespace

TORCH_LIBRARY_IMPL(lrfused, CPU, m) {
  m.impl("fused_adam_", &fused_adam_cpu);
}

}  // namespace lrfused
