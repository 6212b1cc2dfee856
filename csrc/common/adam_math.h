// One element of Adam / AdamW / AMSGrad, in float32 opmath, shared by the CPU kernel (where the
// element type is at::vec::Vectorized<float>) and the CUDA kernel (where it is float).
//
// note [Order of operations]
// The update follows torch.optim.Adam's single-tensor path operation by operation, so that the
// roundings that touch the parameter itself are the same and fp32 trajectories agree to ~1e-7:
//   g = -g (maximize);  Adam: g = g + wd * p;  AdamW: p = p * (1 - lr * wd)
//   m = lerp(m, g, 1 - beta1);  v = v * beta2 + (1 - beta2) * g * g;  v_max = max(v_max, v)
//   p = p + (-step_size) * m / (sqrt(v) / sqrt(bc2) + eps),  step_size = lr / bc1
// Scalars that torch computes in Python floats (bias corrections, 1 - lr * wd, step_size) are
// computed here in double once per call, then rounded to float, as torch's kernels receive them.
#pragma once

#include <math.h>
#include <cstdint>

#include "host_device.h"

namespace lrfused {

// The per-call scalars of one Adam step, computed once from the schedule's lr and beta1 and the
// step count after its increment.
struct AdamScalars {
  float beta1;
  float beta2;
  float one_minus_beta1;
  float one_minus_beta2;
  float eps;
  float weight_decay;
  float decay_factor;           // 1 - lr * weight_decay (AdamW)
  float neg_step_size;          // -lr / (1 - beta1^step)
  float bias_correction2_sqrt;  // sqrt(1 - beta2^step)
};

LRFUSED_HOST_DEVICE AdamScalars make_adam_scalars(
    double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  const double steps = static_cast<double>(step);
  AdamScalars s;
  s.beta1 = static_cast<float>(beta1);
  s.beta2 = static_cast<float>(beta2);
  s.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  s.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  s.eps = static_cast<float>(eps);
  s.weight_decay = static_cast<float>(weight_decay);
  s.decay_factor = static_cast<float>(1.0 - lr * weight_decay);
  s.neg_step_size = static_cast<float>(-(lr / (1.0 - ::pow(beta1, steps))));
  s.bias_correction2_sqrt = static_cast<float>(::sqrt(1.0 - ::pow(beta2, steps)));
  return s;
}

// The few operations whose spelling differs between float and a SIMD vector type. The CPU kernel
// specialises this for at::vec::Vectorized<float>.
template <typename T>
struct OpMath;

template <>
struct OpMath<float> {
  LRFUSED_HOST_DEVICE static float sqrt(float x) { return ::sqrtf(x); }
  LRFUSED_HOST_DEVICE static float max(float a, float b) { return a > b || a != a ? a : b; }
};

// torch's lerp: the branch keeps the result exact at both ends of the weight range.
template <typename T>
LRFUSED_HOST_DEVICE T lerp(T from, T to, float weight) {
  if (weight < 0.5f) {
    return from + T(weight) * (to - from);
  }
  return to - (to - from) * T(1.0f - weight);
}

// Updates one element (or one vector of elements) in place. `grad` is already unscaled.
template <typename T, bool kAmsgrad, bool kDecoupled>
LRFUSED_HOST_DEVICE void adam_update(
    T& param, T grad, T& exp_avg, T& exp_avg_sq, T& max_exp_avg_sq,
    const AdamScalars& s, bool maximize, bool has_weight_decay) {
  if (maximize) {
    grad = T(0.0f) - grad;
  }
  if (has_weight_decay) {
    if (kDecoupled) {
      param = param * T(s.decay_factor);
    } else {
      grad = grad + T(s.weight_decay) * param;
    }
  }
  exp_avg = lerp(exp_avg, grad, s.one_minus_beta1);
  exp_avg_sq = exp_avg_sq * T(s.beta2) + T(s.one_minus_beta2) * grad * grad;
  T second_moment = exp_avg_sq;
  if (kAmsgrad) {
    max_exp_avg_sq = OpMath<T>::max(max_exp_avg_sq, exp_avg_sq);
    second_moment = max_exp_avg_sq;
  }
  const T denom = OpMath<T>::sqrt(second_moment) / T(s.bias_correction2_sqrt) + T(s.eps);
  param = param + T(s.neg_step_size) * exp_avg / denom;
}

}  // namespace lrfused
