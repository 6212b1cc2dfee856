// The update rules one step op can run, and what the shared code asks of each (note [The seam of
// an update rule] in csrc/README.md): which of its states a bucket's tensors have, which flags it
// reads, and how many states it keeps at most. The per-element math is each rule's own header.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace lrfused {

enum class UpdateRuleKind : int32_t { kAdam = 0, kSgd = 1, kRmsprop = 2, kAdagrad = 3 };
constexpr int kNumUpdateRules = 4;

// A bucket's flags. Each rule reads its own (rule_flags); maximize is every rule's.
enum BucketFlags : int32_t {
  kFlagAmsgrad = 1,    // Adam
  kFlagDecoupled = 2,  // Adam (AdamW)
  kFlagMaximize = 4,   // every rule
  kFlagMomentum = 8,   // SGD (momentum != 0), RMSprop (momentum > 0): the momentum buffer exists
  kFlagNesterov = 16,  // SGD
  kFlagCentered = 32,  // RMSprop
};

// The flags rule `kind` accepts.
LRFUSED_HOST_DEVICE int32_t rule_flags(UpdateRuleKind kind) {
  switch (kind) {
    case UpdateRuleKind::kAdam: return kFlagAmsgrad | kFlagDecoupled | kFlagMaximize;
    case UpdateRuleKind::kSgd: return kFlagMaximize | kFlagMomentum | kFlagNesterov;
    case UpdateRuleKind::kRmsprop: return kFlagMaximize | kFlagMomentum | kFlagCentered;
    default: return kFlagMaximize;
  }
}

// Whether a tensor of a bucket of rule `kind` with `flags` has state `k` (in the rule's order:
// AdamState, SgdState, RmspropState, AdagradState).
LRFUSED_HOST_DEVICE bool rule_has_state(UpdateRuleKind kind, int32_t flags, int k) {
  switch (kind) {
    case UpdateRuleKind::kAdam: return k < 2 || (k == 2 && (flags & kFlagAmsgrad) != 0);
    case UpdateRuleKind::kSgd: return k == 0 && (flags & kFlagMomentum) != 0;
    case UpdateRuleKind::kRmsprop:
      return k == 0 || (k == 1 && (flags & kFlagMomentum) != 0) || (k == 2 && (flags & kFlagCentered) != 0);
    default: return k == 0;
  }
}

}  // namespace lrfused
