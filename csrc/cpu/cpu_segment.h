// What the CPU step hands to its update loop: per tensor, raw pointers and the function that
// updates a range of its elements with its bucket's scalars.
#pragma once

#include <cstdint>

#include "../common/adagrad_math.h"
#include "../common/adam_math.h"
#include "../common/rmsprop_math.h"
#include "../common/sgd_math.h"
#include "../common/step_plan.h"

namespace lrfused {

struct StepConfig {
  // The bucket's scalars in each opmath type (float64 params read the double ones), narrowed once
  // per call, not once per tensor.
  // The rule's own are set; the others are left as they are.
  AdamScalars<float> scalars_float;
  AdamScalars<double> scalars_double;
  SgdScalars<float> sgd_float;
  SgdScalars<double> sgd_double;
  RmspropScalars<float> rmsprop_float;
  RmspropScalars<double> rmsprop_double;
  AdagradScalars<float> adagrad_float;
  AdagradScalars<double> adagrad_double;
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
