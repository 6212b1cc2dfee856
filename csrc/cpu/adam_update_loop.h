// The CPU update loop, compiled once per instruction set (see note [CPU instruction sets] in
// cpu_step.cpp): every file that includes this header defines LRFUSED_CPU_VARIANT first.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common/adam_math.h"
#include "cpu_segment.h"

namespace lrfused {

// Vectorized<float> and Vectorized<double> are distinct types in each instruction-set variant
// (at::vec's inline namespace), so each variant file specialises these once.
template <>
struct OpMath<at::vec::Vectorized<float>> {
  using Vec = at::vec::Vectorized<float>;
  static Vec sqrt(const Vec& x) { return x.sqrt(); }
  static Vec max(const Vec& a, const Vec& b) { return at::vec::maximum(a, b); }
};

template <>
struct OpMath<at::vec::Vectorized<double>> {
  using Vec = at::vec::Vectorized<double>;
  static Vec sqrt(const Vec& x) { return x.sqrt(); }
  static Vec max(const Vec& a, const Vec& b) { return at::vec::maximum(a, b); }
};

namespace LRFUSED_CPU_VARIANT {

using FloatVec = at::vec::Vectorized<float>;

template <typename scalar_t>
struct Segment {
  scalar_t* param;
  scalar_t* grad;
  scalar_t* exp_avg;
  scalar_t* exp_avg_sq;
  scalar_t* max_exp_avg_sq;  // null without AMSGrad
};

// torch's opmath: float64 for float64 params, float32 for the others.
template <typename scalar_t>
using OpmathOf = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Elements [begin, end) of one tensor: full opmath vectors first, then a scalar tail.
template <typename scalar_t, bool kAmsgrad, bool kDecoupled>
void update_range(const Segment<scalar_t>& segment, int64_t begin, int64_t end, const StepConfig& c) {
  using opmath_t = OpmathOf<scalar_t>;
  // Local copies: the vector stores may alias anything (GCC's unaligned stores are may_alias), so
  // pointers and scalars read through references would be reloaded on every iteration.
  scalar_t* const param = segment.param;
  scalar_t* const grad = segment.grad;
  scalar_t* const exp_avg = segment.exp_avg;
  scalar_t* const exp_avg_sq = segment.exp_avg_sq;
  scalar_t* const max_exp_avg_sq = segment.max_exp_avg_sq;
  const AdamScalars<opmath_t> scalars = c.adam.in<opmath_t>();
  const bool maximize = c.maximize;
  const bool has_weight_decay = c.has_weight_decay;
  const bool unscale = c.grad_scale != nullptr;
  const opmath_t scale = unscale ? static_cast<opmath_t>(*c.grad_scale) : opmath_t(1);
  int64_t i = begin;
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    // float32 and float64: the vectors of the element type are the opmath vectors.
    using Vec = at::vec::Vectorized<opmath_t>;
    for (; i + Vec::size() <= end; i += Vec::size()) {
      Vec p = Vec::loadu(param + i);
      Vec g = Vec::loadu(grad + i);
      Vec m = Vec::loadu(exp_avg + i);
      Vec v = Vec::loadu(exp_avg_sq + i);
      Vec vmax = kAmsgrad ? Vec::loadu(max_exp_avg_sq + i) : Vec(opmath_t(0));
      if (unscale) {
        g = g / Vec(scale);
        g.store(grad + i);
      }
      adam_update<Vec, opmath_t, kAmsgrad, kDecoupled>(p, g, m, v, vmax, scalars, maximize, has_weight_decay);
      p.store(param + i);
      m.store(exp_avg + i);
      v.store(exp_avg_sq + i);
      if (kAmsgrad) vmax.store(max_exp_avg_sq + i);
    }
  } else {
    // Reduced precision: each vector of scalar_t widens to two float vectors (fp32 opmath).
    using Vec = at::vec::Vectorized<scalar_t>;
    for (; i + Vec::size() <= end; i += Vec::size()) {
      auto [p0, p1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(param + i));
      auto [g0, g1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(grad + i));
      auto [m0, m1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(exp_avg + i));
      auto [v0, v1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(exp_avg_sq + i));
      FloatVec x0(0.0f), x1(0.0f);
      if (kAmsgrad) std::tie(x0, x1) = at::vec::convert_to_float<scalar_t>(Vec::loadu(max_exp_avg_sq + i));
      if (unscale) {
        g0 = g0 / FloatVec(scale);
        g1 = g1 / FloatVec(scale);
        at::vec::convert_from_float<scalar_t>(g0, g1).store(grad + i);
      }
      adam_update<FloatVec, float, kAmsgrad, kDecoupled>(p0, g0, m0, v0, x0, scalars, maximize, has_weight_decay);
      adam_update<FloatVec, float, kAmsgrad, kDecoupled>(p1, g1, m1, v1, x1, scalars, maximize, has_weight_decay);
      at::vec::convert_from_float<scalar_t>(p0, p1).store(param + i);
      at::vec::convert_from_float<scalar_t>(m0, m1).store(exp_avg + i);
      at::vec::convert_from_float<scalar_t>(v0, v1).store(exp_avg_sq + i);
      if (kAmsgrad) at::vec::convert_from_float<scalar_t>(x0, x1).store(max_exp_avg_sq + i);
    }
  }
  for (; i < end; ++i) {
    opmath_t p = static_cast<opmath_t>(param[i]);
    opmath_t g = static_cast<opmath_t>(grad[i]);
    opmath_t m = static_cast<opmath_t>(exp_avg[i]);
    opmath_t v = static_cast<opmath_t>(exp_avg_sq[i]);
    opmath_t vmax = kAmsgrad ? static_cast<opmath_t>(max_exp_avg_sq[i]) : opmath_t(0);
    if (unscale) {
      g = g / scale;
      grad[i] = static_cast<scalar_t>(g);
    }
    adam_update<opmath_t, opmath_t, kAmsgrad, kDecoupled>(p, g, m, v, vmax, scalars, maximize, has_weight_decay);
    param[i] = static_cast<scalar_t>(p);
    exp_avg[i] = static_cast<scalar_t>(m);
    exp_avg_sq[i] = static_cast<scalar_t>(v);
    if (kAmsgrad) max_exp_avg_sq[i] = static_cast<scalar_t>(vmax);
  }
}

template <typename scalar_t, bool kAmsgrad, bool kDecoupled>
void update_segment(const CpuSegment& s, int64_t begin, int64_t end) {
  const Segment<scalar_t> typed{
      static_cast<scalar_t*>(s.param), static_cast<scalar_t*>(s.grad), static_cast<scalar_t*>(s.state[kAdamExpAvg]),
      static_cast<scalar_t*>(s.state[kAdamExpAvgSq]), static_cast<scalar_t*>(s.state[kAdamMaxExpAvgSq])};
  update_range<scalar_t, kAmsgrad, kDecoupled>(typed, begin, end, *s.config);
}

template <typename scalar_t>
RangeUpdate typed_update(bool amsgrad, bool decoupled) {
  if (amsgrad) {
    return decoupled ? &update_segment<scalar_t, true, true> : &update_segment<scalar_t, true, false>;
  }
  return decoupled ? &update_segment<scalar_t, false, true> : &update_segment<scalar_t, false, false>;
}

inline RangeUpdate select_update(ElementType type, bool amsgrad, bool decoupled) {
  switch (type) {
    case ElementType::kFloat16: return typed_update<at::Half>(amsgrad, decoupled);
    case ElementType::kBFloat16: return typed_update<at::BFloat16>(amsgrad, decoupled);
    case ElementType::kFloat64: return typed_update<double>(amsgrad, decoupled);
    default: return typed_update<float>(amsgrad, decoupled);
  }
}

}  // namespace LRFUSED_CPU_VARIANT
}  // namespace lrfused
