// The update loops of every rule for any CPU (at::vec's portable Vectorized).
#define LRFUSED_CPU_VARIANT cpu_default
#include "adam_update_loop.h"
#include "rule_update_loop.h"

namespace lrfused::cpu_default {
RangeUpdate range_update(ElementType type, int32_t rule, int32_t flags) { return select_any_update(type, rule, flags); }
}  // namespace lrfused::cpu_default
