// The update loop for any CPU (at::vec's portable Vectorized).
#define LRFUSED_CPU_VARIANT cpu_default
#include "adam_update_loop.h"

namespace lrfused::cpu_default {
RangeUpdate range_update(ElementType type, bool amsgrad, bool decoupled) {
  return select_update(type, amsgrad, decoupled);
}
}  // namespace lrfused::cpu_default
