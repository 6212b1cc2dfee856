// One element of Adam / AdamW / AMSGrad, shared by the CPU kernel (where the element type is an
// at::vec::Vectorized) and the CUDA kernel (where it is a scalar). The opmath is torch's: float32
// for float32, float16 and bfloat16 params, float64 for float64 params.
//
// note [Order of operations]
// The update follows torch.optim.Adam's single-tensor path operation by operation, so that the
// roundings that touch the parameter itself are the same and fp32 trajectories agree to ~1e-7:
//   g = -g (maximize);  Adam: g = g + wd * p;  AdamW: p = p * (1 - lr * wd)
//   m = lerp(m, g, 1 - beta1);  v = v * beta2 + (1 - beta2) * g * g;  v_max = max(v_max, v)
//   p = p + (-step_size) * m / (sqrt(v) / sqrt(bc2) + eps),  step_size = lr / bc1
// Scalars that torch computes in Python floats (bias corrections, 1 - lr * wd, step_size) are
// computed here in double once per call, then rounded to the opmath type (float for all but
// float64 params), as torch's kernels receive them.
#pragma once

#include <math.h>
#include <cstdint>

#include "host_device.h"

namespace lrfused {

// Adam's states, in the order of TensorEntry::state (max_exp_avg_sq: AMSGrad only).
enum AdamState : int { kAdamExpAvg = 0, kAdamExpAvgSq = 1, kAdamMaxExpAvgSq = 2, kAdamStates = 3 };

// The per-call scalars of one Adam step, computed once from the schedule's lr and beta1 and the
// step count after its increment: in double, then narrowed to the opmath type by `scalars_as`.
template <typename opmath_t>
struct AdamScalars {
  opmath_t beta2;
  opmath_t one_minus_beta1;
  opmath_t one_minus_beta2;
  opmath_t eps;
  opmath_t weight_decay;
  opmath_t decay_factor;           // 1 - lr * weight_decay (AdamW)
  opmath_t bias_correction1;       // 1 - beta1^step (read by note [Unusable schedule values] too)
  opmath_t neg_step_size;          // -lr / bias_correction1
  opmath_t bias_correction2_sqrt;  // sqrt(1 - beta2^step)
};

LRFUSED_HOST_DEVICE AdamScalars<double> make_adam_scalars(double lr, double beta1, double beta2, double eps,
                                                          double weight_decay, int64_t step) {
  const double steps = static_cast<double>(step);
  AdamScalars<double> s;
  s.beta2 = beta2;
  s.one_minus_beta1 = 1.0 - beta1;
  s.one_minus_beta2 = 1.0 - beta2;
  s.eps = eps;
  s.weight_decay = weight_decay;
  s.decay_factor = 1.0 - lr * weight_decay;
  s.bias_correction1 = 1.0 - ::pow(beta1, steps);
  s.neg_step_size = -(lr / s.bias_correction1);
  s.bias_correction2_sqrt = ::sqrt(1.0 - ::pow(beta2, steps));
  return s;
}

// The scalars in the opmath type, each rounded once from its double value.
template <typename opmath_t>
LRFUSED_HOST_DEVICE AdamScalars<opmath_t> scalars_as(const AdamScalars<double>& s) {
  AdamScalars<opmath_t> r;
  r.beta2 = static_cast<opmath_t>(s.beta2);
  r.one_minus_beta1 = static_cast<opmath_t>(s.one_minus_beta1);
  r.one_minus_beta2 = static_cast<opmath_t>(s.one_minus_beta2);
  r.eps = static_cast<opmath_t>(s.eps);
  r.weight_decay = static_cast<opmath_t>(s.weight_decay);
  r.decay_factor = static_cast<opmath_t>(s.decay_factor);
  r.bias_correction1 = static_cast<opmath_t>(s.bias_correction1);
  r.neg_step_size = static_cast<opmath_t>(s.neg_step_size);
  r.bias_correction2_sqrt = static_cast<opmath_t>(s.bias_correction2_sqrt);
  return r;
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

template <>
struct OpMath<double> {
  LRFUSED_HOST_DEVICE static double sqrt(double x) { return ::sqrt(x); }
  LRFUSED_HOST_DEVICE static double max(double a, double b) { return a > b || a != a ? a : b; }
};

// torch's lerp: the branch keeps the result exact at both ends of the weight range. (A weight
// outside [0, 1], from a beta1 outside [0, 1) that a scheduler wrote, takes torch's branches too.)
template <typename T, typename S>
LRFUSED_HOST_DEVICE T lerp(T from, T to, S weight) {
  if (weight < S(0.5)) {
    return from + T(weight) * (to - from);
  }
  return to - (to - from) * T(S(1) - weight);
}

// Updates one element (or one vector of elements) in place, in the opmath type S (T is S or a
// vector of S). `grad` is already unscaled.
template <typename T, typename S, bool kAmsgrad, bool kDecoupled>
LRFUSED_HOST_DEVICE void adam_update(T& param, T grad, T& exp_avg, T& exp_avg_sq, T& max_exp_avg_sq,
                                     const AdamScalars<S>& s, bool maximize, bool has_weight_decay) {
  if (maximize) {
    grad = T(S(0)) - grad;
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
