// The arguments of lrfused::fused_adam_, gathered once so that every backend checks them the same
// way (csrc/ops.cpp) before it changes any tensor.
#pragma once

#include <ATen/ATen.h>
#include <optional>
#include <vector>

namespace lrfused {

struct FusedAdamArgs {
  at::TensorList params;
  at::TensorList grads;
  at::TensorList exp_avgs;
  at::TensorList exp_avg_sqs;
  at::TensorList max_exp_avg_sqs;
  const at::Tensor& step;
  const std::optional<at::Tensor>& clock;
  const at::Tensor& schedule;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  bool decoupled_weight_decay;
  bool amsgrad;
  bool maximize;
  const std::optional<at::Tensor>& grad_scale;
  const std::optional<at::Tensor>& found_inf;
  const std::optional<at::Tensor>& invalid_steps;
};

// Raises (TORCH_CHECK) with a message naming the argument when the call is malformed.
void check_fused_adam_args(const FusedAdamArgs& args);

// The grads of a call in their params' memory layout, which the kernels walk: a grad with other
// strides is copied into its param's layout, and with AMP (the kernels write the unscaled grad)
// the copies are written back afterwards.
class GradsInParamLayout {
 public:
  GradsInParamLayout(at::TensorList params, at::TensorList grads);
  const std::vector<at::Tensor>& tensors() const { return tensors_; }
  void write_back(at::TensorList grads) const;

 private:
  std::vector<at::Tensor> tensors_;
  std::vector<size_t> copied_;
};

// Raises when a CPU schedule program is malformed (see note [Schedule encoding]).
void check_schedule_program(const at::Tensor& schedule);

// Raises when the arguments of lrfused::advance_lr_ are malformed (the rules' structure is checked
// where they live on the CPU; see note [Scheduler steps on the device]). Returns the group count.
int64_t check_advance_lr_args(const at::Tensor& groups, const at::Tensor& clock, const at::Tensor& rules);

// Raises when a CPU rules array for `group_count` groups is malformed.
void check_rules(const at::Tensor& rules, int64_t group_count);

}  // namespace lrfused
