// The tensors an optimizer's eager step reads, held in C++ between steps.
//
// note [Step tables]
// A step of a model of a few thousand tensors is decided by what the host does per tensor: in
// Python, building the lists of grads (and reading `.grad` through the Python attribute), then
// boxing five lists into the dispatcher and checking every tensor again. The eager step instead
// hands the op a table (under a handle, note [Bucket handles]) that lfused::set_step_table filled
// once per plan: the params, their states, the params whose grads it reads (`sources`; a complex
// param is read as its real view) and the params that had no grad (`watched`). Each step then:
//
// * reads every grad in C++ (`source.grad()`: no Python, no new list, no refcount) and checks it
//   against its param as adam_step_ checks its lists;
// * finds the pattern the table was made for: every source has a grad and no watched param has
//   one. Otherwise (a param without a grad this step, a grad of another shape, a watched param
//   that got one) it returns False before writing anything, and the optimizer makes a new plan
//   and steps through adam_step_, whose checks raise what must be raised;
// * reuses the call it gathered the last time (its vectors keep their capacity), so a step in a
//   training loop allocates nothing on the host.
//
// The table holds the state tensors the optimizer made. The optimizer makes a new table whenever
// its state or groups change through its own interface (a new plan, load_state_dict,
// add_param_group); a state tensor replaced by hand in `optimizer.state` is not seen until then.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "ops.h"

namespace lrfused {

struct StepTable {
  std::vector<at::Tensor> sources;          // per tensor: the param whose grad is read
  std::vector<bool> complex_sources;        // read as view_as_real(grad)
  std::vector<at::Tensor> params, exp_avgs, exp_avg_sqs;
  std::vector<at::Tensor> max_exp_avg_sqs;  // indexed by the buckets' kBucketMaxBegin
  std::vector<at::Tensor> watched;          // params with no grad when the plan was made
  std::vector<at::Tensor> real_grads;       // scratch: the real views of complex grads
  StepCall call;                            // scratch, reused by every step
};

// What a handle keeps: the eager table (when set_step_table filled one) and the backend's cache.
struct HandleState {
  std::unique_ptr<StepTable> table;
  std::shared_ptr<void> backend;
};

}  // namespace lrfused
