// What the CPU step hands to its update loop: per tensor, raw pointers and the function that
// updates a range of its elements with its bucket's scalars.
#pragma once

#include <cstdint>

#include "../common/adam_math.h"
#include "../common/step_plan.h"

namespace lrfused {

struct StepConfig {
  // The bucket's scalars in each opmath type (float64 params read the double ones), narrowed once
  // per call, not once per tensor.
  AdamScalars<float> scalars_float;
  AdamScalars<double> scalars_double;
  bool maximize;
  bool has_weight_decay;
  const float* grad_scale;  // null without AMP
};

struct CpuSegment;
// Updates elements [begin, end) of one tensor; one instance per dtype, AMSGrad and decoupling.
using RangeUpdate = void (*)(const CpuSegment& segment, int64_t begin, int64_t end);

struct CpuSegment {
  void* param;
  void* grad;
  void* state[kMaxStates];  // the rule's states (TensorEntry::state)
  RangeUpdate update;
  const StepConfig* config;
};

// The update of each instruction-set variant (note [CPU instruction sets] in adam_step.cpp).
namespace cpu_default {
RangeUpdate range_update(ElementType type, bool amsgrad, bool decoupled);
}
namespace cpu_avx2 {
RangeUpdate range_update(ElementType type, bool amsgrad, bool decoupled);
}

}  // namespace lrfused
