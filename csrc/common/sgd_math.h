// One element of SGD (momentum, dampening, Nesterov, weight decay, maximize), shared by the CPU
// kernel (where the element type is an at::vec::Vectorized) and the CUDA kernel (a scalar), in
// torch's opmath (float32 for float32, float16 and bfloat16 params, float64 for float64).
//
// note [SGD's order of operations]
// torch.optim.SGD's for-loop, operation by operation:
//   g = -g (maximize);  g = g + wd * p
//   momentum: buf = g at the buffer's first step, else buf = buf * momentum + (1 - dampening) * g;
//             Nesterov: g = g + momentum * buf, else g = buf
//   p = p + (-lr) * g
// torch makes the buffer at a param's first step with momentum (a clone of g); here the buffer is
// made (zeros) when the plan is, and the bucket's step counter says the first step: a bucket whose
// counter is 0 takes `buf = g`.
#pragma once

#include "host_device.h"

namespace lrfused {

// SGD's one state (with momentum only).
enum SgdState : int { kSgdMomentumBuffer = 0, kSgdStates = 1 };

template <typename opmath_t>
struct SgdScalars {
  opmath_t neg_lr;
  opmath_t momentum;
  opmath_t one_minus_dampening;
  opmath_t weight_decay;
};

LRFUSED_HOST_DEVICE SgdScalars<double> make_sgd_scalars(double lr, double momentum, double dampening,
                                                        double weight_decay) {
  return SgdScalars<double>{-lr, momentum, 1.0 - dampening, weight_decay};
}

template <typename opmath_t>
LRFUSED_HOST_DEVICE SgdScalars<opmath_t> scalars_as(const SgdScalars<double>& s) {
  return SgdScalars<opmath_t>{static_cast<opmath_t>(s.neg_lr), static_cast<opmath_t>(s.momentum),
                              static_cast<opmath_t>(s.one_minus_dampening), static_cast<opmath_t>(s.weight_decay)};
}

// Updates one element (or vector) in place, in the opmath type S (T is S or a vector of S).
// `buffer` is read and written only with kMomentum.
template <typename T, typename S, bool kMomentum, bool kNesterov>
LRFUSED_HOST_DEVICE void sgd_update(T& param, T grad, T& buffer, const SgdScalars<S>& s, bool maximize,
                                    bool has_weight_decay, bool first_step) {
  if (maximize) grad = T(S(0)) - grad;
  if (has_weight_decay) grad = grad + T(s.weight_decay) * param;
  if (kMomentum) {
    buffer = first_step ? grad : buffer * T(s.momentum) + T(s.one_minus_dampening) * grad;
    grad = kNesterov ? grad + T(s.momentum) * buffer : buffer;
  }
  param = param + T(s.neg_lr) * grad;
}

}  // namespace lrfused
