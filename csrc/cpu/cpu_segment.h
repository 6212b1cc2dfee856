// What the CPU step hands to its update loop: per tensor, raw pointers and the function that
// updates a range of its elements with its bucket's scalars.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../common/adagrad_math.h"
#include "../common/adam_math.h"
#include "../common/rmsprop_math.h"
#include "../common/sgd_math.h"
#include "../common/step_plan.h"

namespace lrfused {

// A rule's scalars in each opmath type (float64 params read the double ones), narrowed once per
// call, not once per tensor.
template <template <typename> class Scalars>
struct OpmathScalars {
  Scalars<float> narrow;
  Scalars<double> wide;
  void set(const Scalars<double>& s) {
    narrow = scalars_as<float>(s);
    wide = s;
  }
  template <typename S>
  const Scalars<S>& in() const {
    if constexpr (std::is_same_v<S, double>) {
      return wide;
    } else {
      return narrow;
    }
  }
};

struct StepConfig {
  union {  // the bucket's rule's
    OpmathScalars<AdamScalars> adam;
    OpmathScalars<SgdScalars> sgd;
    OpmathScalars<RmspropScalars> rmsprop;
    OpmathScalars<AdagradScalars> adagrad;
  };
  bool maximize;
  bool has_weight_decay;
  bool first_step;          // SGD: the momentum buffer starts as the grad
  const float* grad_scale;  // null without AMP
};

struct CpuSegment;
// Updates elements [begin, end) of one tensor; one instance per rule, dtype and the flags that
// choose the loop.
using RangeUpdate = void (*)(const CpuSegment& segment, int64_t begin, int64_t end);

struct CpuSegment {
  void* param;
  void* grad;
  void* state[kMaxStates];  // the rule's states (TensorEntry::state)
  RangeUpdate update;
  const StepConfig* config;
};

// The update of each instruction-set variant (note [CPU instruction sets] in cpu_step.cpp).
namespace cpu_default {
RangeUpdate range_update(ElementType type, int32_t rule, int32_t flags);
}
namespace cpu_avx2 {
RangeUpdate range_update(ElementType type, int32_t rule, int32_t flags);
}

}  // namespace lrfused
