// One element of RMSprop (centered, momentum, weight decay, maximize), shared by the CPU and the
// CUDA kernel in torch's opmath.
//
// note [RMSprop's order of operations]
// torch.optim.RMSprop's for-loop, operation by operation (addcmul and addcdiv as torch's CPU
// kernels evaluate them: self + (value * a) * b, self + (value * a) / b):
//   g = -g (maximize);  g = g + wd * p
//   v = v * alpha + ((1 - alpha) * g) * g
//   centered: m = lerp(m, g, 1 - alpha);  avg = sqrt(v + (-1 * m) * m)   else avg = sqrt(v)
//   avg = avg + eps
//   momentum: buf = buf * momentum + g / avg;  p = p + (-lr) * buf
//   else:     p = p + ((-lr) * g) / avg
#pragma once

#include "adam_math.h"
#include "host_device.h"

namespace lrfused {

// RMSprop's states (momentum_buffer with momentum > 0, grad_avg when centered).
enum RmspropState : int { kRmspropSquareAvg = 0, kRmspropMomentumBuffer = 1, kRmspropGradAvg = 2, kRmspropStates = 3 };

template <typename opmath_t>
struct RmspropScalars {
  opmath_t alpha;
  opmath_t one_minus_alpha;
  opmath_t eps;
  opmath_t weight_decay;
  opmath_t momentum;
  opmath_t neg_lr;
};

LRFUSED_HOST_DEVICE RmspropScalars<double> make_rmsprop_scalars(double lr, double momentum, double alpha, double eps,
                                                                double weight_decay) {
  return RmspropScalars<double>{alpha, 1.0 - alpha, eps, weight_decay, momentum, -lr};
}

template <typename opmath_t>
LRFUSED_HOST_DEVICE RmspropScalars<opmath_t> scalars_as(const RmspropScalars<double>& s) {
  return RmspropScalars<opmath_t>{static_cast<opmath_t>(s.alpha),    static_cast<opmath_t>(s.one_minus_alpha),
                                  static_cast<opmath_t>(s.eps),      static_cast<opmath_t>(s.weight_decay),
                                  static_cast<opmath_t>(s.momentum), static_cast<opmath_t>(s.neg_lr)};
}

template <typename T, typename S, bool kCentered, bool kMomentum>
LRFUSED_HOST_DEVICE void rmsprop_update(T& param, T grad, T& square_avg, T& buffer, T& grad_avg,
                                        const RmspropScalars<S>& s, bool maximize, bool has_weight_decay) {
  if (maximize) grad = T(S(0)) - grad;
  if (has_weight_decay) grad = grad + T(s.weight_decay) * param;
  square_avg = square_avg * T(s.alpha) + T(s.one_minus_alpha) * grad * grad;
  T avg;
  if (kCentered) {
    grad_avg = lerp(grad_avg, grad, s.one_minus_alpha);
    avg = OpMath<T>::sqrt(square_avg + T(S(-1)) * grad_avg * grad_avg);
  } else {
    avg = OpMath<T>::sqrt(square_avg);
  }
  avg = avg + T(s.eps);
  if (kMomentum) {
    buffer = buffer * T(s.momentum) + grad / avg;
    param = param + T(s.neg_lr) * buffer;
  } else {
    param = param + T(s.neg_lr) * grad / avg;
  }
}

}  // namespace lrfused
