// What every step op gathers and checks before it writes (csrc/ops.cpp), and the runner each
// backend registers.
#pragma once

#include <ATen/ATen.h>
#include <initializer_list>
#include <memory>
#include <optional>
#include <vector>

#include "common/step_plan.h"

namespace lrfused {

// The tensors of one call by column: tensor i of the call is params[i], grads[i] and states[k][i],
// the update rule's states in its order (TensorEntry::state), null where the tensor has no such
// state (Adam's max_exp_avg_sq outside an AMSGrad bucket), attached per bucket by the op. Pointers, so that the eager
// table (step_table.h) lists the tensors it holds and the grads it reads without copying a handle.
struct StepTensors {
  std::vector<const at::Tensor*> params, grads;
  std::vector<const at::Tensor*> states[kMaxStates];
  size_t size() const { return params.size(); }
  void clear();
  void reserve(size_t n);
  // `states`: the tensor's states in the rule's order; fewer than kMaxStates leave the rest null.
  void add(const at::Tensor& param, const at::Tensor& grad, std::initializer_list<const at::Tensor*> states = {});
};

// note [Working layout]
// The kernels walk the tensors of a param (param, grad, and the rule's states) with one index, so
// they must share one dense memory layout: the param's when the param is
// non-overlapping and dense, contiguous otherwise. A tensor in another layout (the grad of a
// channels_last conv whose param is contiguous, a state made before the model was converted to
// channels_last, a param that is a strided view) is copied into that layout for the call, and what
// the kernel wrote is copied back afterwards. A training loop copies nothing: the optimizer makes
// and reloads its states in the param's layout.
class WorkingLayout {
 public:
  // `grads_written`: the kernel stores the unscaled grads (AMP), so copied grads are copied back.
  WorkingLayout(const StepTensors& tensors, bool grads_written);
  // The pointers the kernels read for tensor i of each column: the argument's own, or its copy.
  void* param(size_t i) const { return pointer(kParams, i); }
  void* grad(size_t i) const { return pointer(kGrads, i); }
  void* state(int k, size_t i) const { return pointer(kStates + k, i); }
  // Copies back what the kernel wrote into the tensors that were copied.
  void write_back() const;

 private:
  enum Column { kParams, kGrads, kStates, kColumns = kStates + kMaxStates };
  const std::vector<const at::Tensor*>& column(int c) const;
  void* pointer(int c, size_t i) const {
    const std::vector<at::Tensor>& copies = copies_[c];
    if (!copies.empty() && copies[i].defined()) return copies[i].data_ptr();
    const at::Tensor* t = column(c)[i];
    return t != nullptr ? t->data_ptr() : nullptr;
  }
  const StepTensors& tensors_;
  bool grads_written_;
  // Per column, the copies by index; a column with no copy stays empty (the training loop's case:
  // nothing is allocated, no tensor is touched beyond its strides).
  std::vector<at::Tensor> copies_[kColumns];
};

// One call of the step, whichever op made it (note [One op per step] in common/step_plan.h): the
// tensors, the bucket of each, the buckets, the deferred scheduler steps and AMP's scalars.
struct StepCall {
  StepTensors tensors;
  // The tensors' pointers when all of a tensor's arrays already share one layout (the eager table
  // knows it without a WorkingLayout); empty: the runner lays the tensors out (note [Working layout]).
  std::vector<TensorEntry> raw;
  std::vector<int32_t> tensor_bucket;
  std::vector<BucketSpec> buckets;
  DeferredSteps deferred{};
  const at::Tensor* grad_scale = nullptr;
  const at::Tensor* found_inf = nullptr;
  const at::Tensor* invalid_steps = nullptr;
  const at::Tensor* words = nullptr;  // the tensor the programs point into (for its device)
  void clear();
};

// The call's pointers: `call.raw` when it was filled, else those of `layout`, made here.
const std::vector<TensorEntry>& raw_tensors(StepCall& call, std::unique_ptr<WorkingLayout>& layout);

// Fills `call.buckets` from the `buckets` rows of a step op and checks them: `steps[b]` is bucket
// b's counter, its program lies in `words`. `op` names the op in the messages; `only_rule` >= 0:
// every bucket must be of that UpdateRuleKind (the op of one rule).
void gather_buckets(const at::Tensor& rows, at::TensorList steps, const at::Tensor& words, int64_t tensor_count,
                    StepCall& call, const char* op, int32_t only_rule);

// The name of rule `kind`'s list of state k in its op's schema (Adam's "exp_avgs", ...).
const char* state_list_name(UpdateRuleKind kind, int k);

// Fills `call.deferred` from the deferred-step arguments and checks them.
void gather_deferred(const at::Tensor& words, at::TensorList clocks, at::TensorList rules, const at::Tensor& applied,
                     const at::Tensor& pending, StepCall& call, const char* op);

// Checks tensor i of the call against its param (device, dtype, shape, sparsity) and the bucket's
// dtype; `op` names the op in the message.
void check_step_tensor(const StepCall& call, size_t i, const char* op);

// The dtype of a bucket's elements, as the shared code names it.
ElementType element_type_of(at::ScalarType dtype);

// Raises when a CPU schedule program is malformed (see note [Schedule encoding]).
void check_schedule_program(const at::Tensor& schedule);

// Raises when the arguments of lrfused::advance_lr_ are malformed (the rules' structure is checked
// where they live on the CPU; see note [Scheduler steps on the device]). Returns the group count.
int64_t check_advance_lr_args(const at::Tensor& groups, const at::Tensor& clock, const at::Tensor& rules);

// Raises when a CPU rules array for `group_count` groups is malformed.
void check_rules(const at::Tensor& rules, int64_t group_count);

// Raises when CPU indexed rules ([offset of each group's node | the nodes]) are malformed.
void check_indexed_rules(const at::Tensor& rules, int64_t group_count);

// Runs a gathered call on its device: the CPU loop, or the CUDA launch that the CUDA library
// registers when it is built. `state` keeps what a backend caches between calls (the CUDA
// tables), or is null for a call that keeps nothing.
void run_step(StepCall& call, std::shared_ptr<void>* state);
void run_step_cpu(StepCall& call);
using StepRunner = void (*)(StepCall& call, std::shared_ptr<void>* state);
// Called by the CUDA library's static initialiser.
bool register_cuda_step_runner(StepRunner runner);

}  // namespace lrfused
