// lrfused::advance_lr_ on the CPU: one scheduler step applied to the param groups' HELD words.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>

#include "../common/lr_step.h"
#include "../ops.h"

namespace lrfused {

namespace {

void advance_lr_cpu(const at::Tensor& groups, const at::Tensor& clock, const at::Tensor& rules,
                    std::optional<int64_t> epoch) {
  const int64_t group_count = check_advance_lr_args(groups, clock, rules);
  TORCH_CHECK(!epoch.has_value() || *epoch >= 0, "advance_lr_: epoch must be non-negative, got ", *epoch);
  check_rules(rules, group_count);
  int64_t* clock_ptr = clock.data_ptr<int64_t>();
  const int64_t t = epoch.has_value() ? *epoch : *clock_ptr + 1;
  apply_rules(rules.data_ptr<double>(), group_count, groups.data_ptr<double>(), t, epoch.has_value());
  *clock_ptr = t;
}

}  // namespace

TORCH_LIBRARY_IMPL(lrfused, CPU, m) { m.impl("advance_lr_", &advance_lr_cpu); }

}  // namespace lrfused
