// The CPU update loop of the rules other than Adam (SGD, RMSprop, Adagrad), compiled once per
// instruction set as adam_update_loop.h is (it is included after it, in the same variant files).
// One loop serves every rule: a rule's Math names the states it reads and applies its element
// function from csrc/common/ to a vector of opmath values, or to one value for the tail.
#pragma once

#include "../common/adagrad_math.h"
#include "../common/rmsprop_math.h"
#include "../common/sgd_math.h"
#include "../common/update_rules.h"
#include "adam_update_loop.h"

namespace lrfused {
namespace LRFUSED_CPU_VARIANT {

template <bool kMomentum, bool kNesterov>
struct SgdMath {
  static constexpr bool has(int k) { return k == kSgdMomentumBuffer && kMomentum; }
  template <typename T, typename S>
  static void apply(T& p, T g, T (&state)[kMaxStates], const StepConfig& c) {
    sgd_update<T, S, kMomentum, kNesterov>(p, g, state[kSgdMomentumBuffer], c.sgd.in<S>(), c.maximize,
                                           c.has_weight_decay, c.first_step);
  }
};

template <bool kCentered, bool kMomentum>
struct RmspropMath {
  static constexpr bool has(int k) {
    return k == kRmspropSquareAvg || (k == kRmspropMomentumBuffer && kMomentum) || (k == kRmspropGradAvg && kCentered);
  }
  template <typename T, typename S>
  static void apply(T& p, T g, T (&state)[kMaxStates], const StepConfig& c) {
    rmsprop_update<T, S, kCentered, kMomentum>(p, g, state[kRmspropSquareAvg], state[kRmspropMomentumBuffer],
                                               state[kRmspropGradAvg], c.rmsprop.in<S>(), c.maximize,
                                               c.has_weight_decay);
  }
};

struct AdagradMath {
  static constexpr bool has(int k) { return k == kAdagradSum; }
  template <typename T, typename S>
  static void apply(T& p, T g, T (&state)[kMaxStates], const StepConfig& c) {
    adagrad_update<T, S>(p, g, state[kAdagradSum], c.adagrad.in<S>(), c.maximize, c.has_weight_decay);
  }
};

// Elements [begin, end) of one tensor: full opmath vectors first, then a scalar tail, as
// adam_update_loop.h's update_range walks them.
template <typename scalar_t, typename Math>
void update_rule_range(const CpuSegment& segment, int64_t begin, int64_t end) {
  using opmath_t = OpmathOf<scalar_t>;
  // A local copy (one rule's scalars and a few flags), as adam_update_loop.h makes one: the vector
  // stores may alias anything, so scalars and flags read through a reference would be reloaded (and
  // broadcast again) at every iteration.
  const StepConfig c = *segment.config;
  scalar_t* const param = static_cast<scalar_t*>(segment.param);
  scalar_t* const grad = static_cast<scalar_t*>(segment.grad);
  scalar_t* const states[kMaxStates] = {static_cast<scalar_t*>(segment.state[0]),
                                        static_cast<scalar_t*>(segment.state[1]),
                                        static_cast<scalar_t*>(segment.state[2])};
  const bool unscale = c.grad_scale != nullptr;
  const opmath_t scale = unscale ? static_cast<opmath_t>(*c.grad_scale) : opmath_t(1);
  int64_t i = begin;
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    using Vec = at::vec::Vectorized<opmath_t>;
    for (; i + Vec::size() <= end; i += Vec::size()) {
      Vec p = Vec::loadu(param + i);
      Vec g = Vec::loadu(grad + i);
      Vec s[kMaxStates] = {Vec(opmath_t(0)), Vec(opmath_t(0)), Vec(opmath_t(0))};
      for (int k = 0; k < kMaxStates; ++k) {
        if (Math::has(k)) s[k] = Vec::loadu(states[k] + i);
      }
      if (unscale) {
        g = g / Vec(scale);
        g.store(grad + i);
      }
      Math::template apply<Vec, opmath_t>(p, g, s, c);
      p.store(param + i);
      for (int k = 0; k < kMaxStates; ++k) {
        if (Math::has(k)) s[k].store(states[k] + i);
      }
    }
  } else {
    // Reduced precision: each vector of scalar_t widens to two float vectors (fp32 opmath).
    using Vec = at::vec::Vectorized<scalar_t>;
    for (; i + Vec::size() <= end; i += Vec::size()) {
      auto [p0, p1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(param + i));
      auto [g0, g1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(grad + i));
      FloatVec s0[kMaxStates] = {FloatVec(0.0f), FloatVec(0.0f), FloatVec(0.0f)};
      FloatVec s1[kMaxStates] = {FloatVec(0.0f), FloatVec(0.0f), FloatVec(0.0f)};
      for (int k = 0; k < kMaxStates; ++k) {
        if (Math::has(k)) std::tie(s0[k], s1[k]) = at::vec::convert_to_float<scalar_t>(Vec::loadu(states[k] + i));
      }
      if (unscale) {
        g0 = g0 / FloatVec(scale);
        g1 = g1 / FloatVec(scale);
        at::vec::convert_from_float<scalar_t>(g0, g1).store(grad + i);
      }
      Math::template apply<FloatVec, float>(p0, g0, s0, c);
      Math::template apply<FloatVec, float>(p1, g1, s1, c);
      at::vec::convert_from_float<scalar_t>(p0, p1).store(param + i);
      for (int k = 0; k < kMaxStates; ++k) {
        if (Math::has(k)) at::vec::convert_from_float<scalar_t>(s0[k], s1[k]).store(states[k] + i);
      }
    }
  }
  for (; i < end; ++i) {
    opmath_t p = static_cast<opmath_t>(param[i]);
    opmath_t g = static_cast<opmath_t>(grad[i]);
    opmath_t s[kMaxStates] = {opmath_t(0), opmath_t(0), opmath_t(0)};
    for (int k = 0; k < kMaxStates; ++k) {
      if (Math::has(k)) s[k] = static_cast<opmath_t>(states[k][i]);
    }
    if (unscale) {
      g = g / scale;
      grad[i] = static_cast<scalar_t>(g);
    }
    Math::template apply<opmath_t, opmath_t>(p, g, s, c);
    param[i] = static_cast<scalar_t>(p);
    for (int k = 0; k < kMaxStates; ++k) {
      if (Math::has(k)) states[k][i] = static_cast<scalar_t>(s[k]);
    }
  }
}

template <typename scalar_t>
RangeUpdate typed_rule_update(UpdateRuleKind rule, int32_t flags) {
  const bool momentum = (flags & kFlagMomentum) != 0;
  switch (rule) {
    case UpdateRuleKind::kSgd:
      if (!momentum) return &update_rule_range<scalar_t, SgdMath<false, false>>;
      return (flags & kFlagNesterov) ? &update_rule_range<scalar_t, SgdMath<true, true>>
                                     : &update_rule_range<scalar_t, SgdMath<true, false>>;
    case UpdateRuleKind::kRmsprop:
      if (flags & kFlagCentered) {
        return momentum ? &update_rule_range<scalar_t, RmspropMath<true, true>>
                        : &update_rule_range<scalar_t, RmspropMath<true, false>>;
      }
      return momentum ? &update_rule_range<scalar_t, RmspropMath<false, true>>
                      : &update_rule_range<scalar_t, RmspropMath<false, false>>;
    default: return &update_rule_range<scalar_t, AdagradMath>;
  }
}

// The loop of a bucket of any rule, dtype and flags.
inline RangeUpdate select_any_update(ElementType type, int32_t rule, int32_t flags) {
  const auto kind = static_cast<UpdateRuleKind>(rule);
  if (kind == UpdateRuleKind::kAdam) {
    return select_update(type, (flags & kFlagAmsgrad) != 0, (flags & kFlagDecoupled) != 0);
  }
  switch (type) {
    case ElementType::kFloat16: return typed_rule_update<at::Half>(kind, flags);
    case ElementType::kBFloat16: return typed_rule_update<at::BFloat16>(kind, flags);
    case ElementType::kFloat64: return typed_rule_update<double>(kind, flags);
    default: return typed_rule_update<float>(kind, flags);
  }
}

}  // namespace LRFUSED_CPU_VARIANT
}  // namespace lrfused
