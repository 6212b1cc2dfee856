// The scalars of one step, from the schedule at the clock: what the CPU and the CUDA kernel both
// compute once per call (per block on CUDA) before touching any element.
//
// note [Unusable schedule values]
// A non-finite lr (a tabulated schedule asked past what was uploaded, a function that returned
// NaN, a NaN tensor lr copied in on the device) cannot raise on a GPU without a host sync. Both
// backends follow one rule, decided here: the bucket is skipped (its params, states and step
// counter unchanged; the call's other buckets step) and the op's `invalid_steps` counter, when
// given, goes up by one for each bucket skipped so.
// Otherwise a value is used as torch uses it. torch checks beta1 only in the constructor, and its
// schedulers write any momentum they are given (torch's own tests cycle beta1 up to 22), so a
// finite beta1 outside [0, 1) takes torch's arithmetic (1 - beta1^t in the bias correction, the
// lerp weight 1 - beta1); the rule skips only where that arithmetic has no finite answer, where
// torch's for-loop Adam raises (ZeroDivisionError at beta1^t == 1, OverflowError when beta1^t
// overflows): 1 - beta1^t or lr / (1 - beta1^t) not finite, or beta1 itself not finite.
// A finite negative lr is used as it is: torch computes one for some chains (a cosine with
// eta_min after a decay to zero) and follows it.
#pragma once

#include <cstdint>

#include "adam_math.h"
#include "host_device.h"
#include "lr_schedule.h"

namespace lrfused {

struct StepScalars {
  AdamScalars<double> scalars;  // narrowed to each bucket's opmath type by the kernels
  bool usable;                  // false: skip the call (see the note above)
};

// The scalars from a schedule value. `beta1` is the optimizer's; a value that cycles beta1
// overrides it. `step` is the count before this step.
LRFUSED_HOST_DEVICE StepScalars scalars_from(ScheduleValue value, double beta1, double beta2, double eps,
                                             double weight_decay, int64_t step) {
  const double step_beta1 = schedule_is_nan(value.beta1) ? beta1 : value.beta1;
  StepScalars result;
  result.scalars = make_adam_scalars(value.lr, step_beta1, beta2, eps, weight_decay, step + 1);
  // x - x is 0 for every finite x and NaN for NaN and the infinities.
  const double bias_correction1 = result.scalars.bias_correction1;
  const double step_size = result.scalars.neg_step_size;
  result.usable = value.lr - value.lr == 0.0 && step_beta1 - step_beta1 == 0.0 &&
                  bias_correction1 - bias_correction1 == 0.0 && step_size - step_size == 0.0;
  return result;
}

// The same, from a program evaluated at `clock`.
LRFUSED_HOST_DEVICE StepScalars step_scalars(const double* schedule, int64_t clock, double beta1, double beta2,
                                             double eps, double weight_decay, int64_t step) {
  return scalars_from(evaluate_schedule(schedule, clock), beta1, beta2, eps, weight_decay, step);
}

}  // namespace lrfused
