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

#include "adagrad_math.h"
#include "adam_math.h"
#include "host_device.h"
#include "lr_schedule.h"
#include "rmsprop_math.h"
#include "sgd_math.h"
#include "update_rules.h"

namespace lrfused {

// The scalars of one bucket's step, in double: the kernels narrow those of the bucket's rule to its
// opmath type. One rule's are held (a CUDA block keeps them in shared memory, where every rule's
// side by side would cost registers to fill).
struct StepScalars {
  union {
    AdamScalars<double> scalars;  // Adam's
    SgdScalars<double> sgd;
    RmspropScalars<double> rmsprop;
    AdagradScalars<double> adagrad;
  };
  bool first_step;  // the bucket's counter is 0 (SGD's momentum buffer starts as the grad)
  bool usable;      // false: skip the call (see the note above)
};

// The scalars from a schedule value. `beta1` is the optimizer's; a value that cycles beta1
// overrides it. `step` is the count before this step.
LRFUSED_HOST_DEVICE StepScalars scalars_from(ScheduleValue value, double beta1, double beta2, double eps,
                                             double weight_decay, int64_t step) {
  const double step_beta1 = schedule_is_nan(value.beta1) ? beta1 : value.beta1;
  StepScalars result{};
  result.scalars = make_adam_scalars(value.lr, step_beta1, beta2, eps, weight_decay, step + 1);
  // x - x is 0 for every finite x and NaN for NaN and the infinities.
  const double bias_correction1 = result.scalars.bias_correction1;
  const double step_size = result.scalars.neg_step_size;
  result.usable = value.lr - value.lr == 0.0 && step_beta1 - step_beta1 == 0.0 &&
                  bias_correction1 - bias_correction1 == 0.0 && step_size - step_size == 0.0;
  return result;
}

// The scalars of a bucket of rule `kind` from a schedule value. `momentum` is the row's momentum word
// (Adam's beta1, SGD's and RMSprop's momentum); a value that cycles it overrides it. `decay` is
// the row's decay word (Adam's beta2, SGD's dampening, RMSprop's alpha, Adagrad's lr_decay).
// Another rule than Adam skips where its lr, its momentum or its step size is not finite.
LRFUSED_HOST_DEVICE StepScalars rule_scalars(UpdateRuleKind kind, ScheduleValue value, double momentum, double decay,
                                             double eps, double weight_decay, int64_t step) {
  if (kind == UpdateRuleKind::kAdam) return scalars_from(value, momentum, decay, eps, weight_decay, step);
  const double step_momentum = schedule_is_nan(value.beta1) ? momentum : value.beta1;
  StepScalars result{};
  result.first_step = step == 0;
  double step_size = value.lr;
  if (kind == UpdateRuleKind::kSgd) {
    result.sgd = make_sgd_scalars(value.lr, step_momentum, decay, weight_decay);
  } else if (kind == UpdateRuleKind::kRmsprop) {
    result.rmsprop = make_rmsprop_scalars(value.lr, step_momentum, decay, eps, weight_decay);
  } else {
    result.adagrad = make_adagrad_scalars(value.lr, decay, eps, weight_decay, step + 1);
    step_size = result.adagrad.neg_clr;
  }
  result.usable = value.lr - value.lr == 0.0 && step_momentum - step_momentum == 0.0 && step_size - step_size == 0.0;
  return result;
}

// The same, from a program evaluated at `clock`.
LRFUSED_HOST_DEVICE StepScalars step_scalars(const double* schedule, int64_t clock, double beta1, double beta2,
                                             double eps, double weight_decay, int64_t step) {
  return scalars_from(evaluate_schedule(schedule, clock), beta1, beta2, eps, weight_decay, step);
}

}  // namespace lrfused
