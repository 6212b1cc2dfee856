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

// note [Working layout]
// The kernels walk the five tensors of a param (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)
// with one index, so the five must share one dense memory layout: the param's when the param is
// non-overlapping and dense, contiguous otherwise. A tensor in another layout (the grad of a
// channels_last conv whose param is contiguous, a state made before the model was converted to
// channels_last, a param that is a strided view) is copied into that layout for the call, and what
// the kernel wrote is copied back afterwards. A training loop copies nothing: the optimizer makes
// and reloads its states in the param's layout.
class WorkingLayout {
 public:
  explicit WorkingLayout(const FusedAdamArgs& args);
  // The pointers the kernels read for tensor i of each list: the argument's own, or its copy.
  void* param(size_t i) const { return pointer(kParams, args_.params, i); }
  void* grad(size_t i) const { return pointer(kGrads, args_.grads, i); }
  void* exp_avg(size_t i) const { return pointer(kExpAvgs, args_.exp_avgs, i); }
  void* exp_avg_sq(size_t i) const { return pointer(kExpAvgSqs, args_.exp_avg_sqs, i); }
  void* max_exp_avg_sq(size_t i) const { return pointer(kMaxExpAvgSqs, args_.max_exp_avg_sqs, i); }
  // Copies back what the kernel wrote into the tensors that were copied (the grads only when the
  // kernel wrote them: with AMP it stores the unscaled grad).
  void write_back() const;

 private:
  enum List { kParams, kGrads, kExpAvgs, kExpAvgSqs, kMaxExpAvgSqs, kLists };
  void* pointer(List list, at::TensorList tensors, size_t i) const {
    const std::vector<at::Tensor>& copies = copies_[list];
    return copies.empty() || !copies[i].defined() ? tensors[i].data_ptr() : copies[i].data_ptr();
  }
  const FusedAdamArgs& args_;
  // Per list, the copies by index; a list with no copy stays empty (the training loop's case:
  // nothing is allocated, no tensor is touched beyond its strides).
  std::vector<at::Tensor> copies_[kLists];
};

// Raises when a CPU schedule program is malformed (see note [Schedule encoding]).
void check_schedule_program(const at::Tensor& schedule);

// Raises when the arguments of lrfused::advance_lr_ are malformed (the rules' structure is checked
// where they live on the CPU; see note [Scheduler steps on the device]). Returns the group count.
int64_t check_advance_lr_args(const at::Tensor& groups, const at::Tensor& clock, const at::Tensor& rules);

// Raises when a CPU rules array for `group_count` groups is malformed.
void check_rules(const at::Tensor& rules, int64_t group_count);

}  // namespace lrfused
