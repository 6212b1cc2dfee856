// One element of Adagrad (lr decay, weight decay, maximize), shared by the CPU and the CUDA kernel
// in torch's opmath.
//
// note [Adagrad's order of operations]
// torch.optim.Adagrad's for-loop, operation by operation (addcmul and addcdiv as torch's CPU
// kernels evaluate them), with `step` the count after this step's increment:
//   g = -g (maximize);  g = g + wd * p
//   clr = lr / (1 + (step - 1) * lr_decay)      (in double, once per call)
//   sum = sum + (1 * g) * g;  std = sqrt(sum) + eps
//   p = p + ((-clr) * g) / std
#pragma once

#include <cstdint>

#include "adam_math.h"
#include "host_device.h"

namespace lrfused {

// Adagrad's one state: the running sum of squares (torch's `sum`).
enum AdagradState : int { kAdagradSum = 0, kAdagradStates = 1 };

template <typename opmath_t>
struct AdagradScalars {
  opmath_t eps;
  opmath_t weight_decay;
  opmath_t neg_clr;  // -lr / (1 + (step - 1) * lr_decay)
};

LRFUSED_HOST_DEVICE AdagradScalars<double> make_adagrad_scalars(double lr, double lr_decay, double eps,
                                                                double weight_decay, int64_t step) {
  const double clr = lr / (1.0 + (static_cast<double>(step) - 1.0) * lr_decay);
  return AdagradScalars<double>{eps, weight_decay, -clr};
}

template <typename opmath_t>
LRFUSED_HOST_DEVICE AdagradScalars<opmath_t> scalars_as(const AdagradScalars<double>& s) {
  return AdagradScalars<opmath_t>{static_cast<opmath_t>(s.eps), static_cast<opmath_t>(s.weight_decay),
                                  static_cast<opmath_t>(s.neg_clr)};
}

template <typename T, typename S>
LRFUSED_HOST_DEVICE void adagrad_update(T& param, T grad, T& sum, const AdagradScalars<S>& s, bool maximize,
                                        bool has_weight_decay) {
  if (maximize) grad = T(S(0)) - grad;
  if (has_weight_decay) grad = grad + T(s.weight_decay) * param;
  sum = sum + T(S(1)) * grad * grad;
  const T std = OpMath<T>::sqrt(sum) + T(s.eps);
  param = param + T(s.neg_clr) * grad / std;
}

}  // namespace lrfused
