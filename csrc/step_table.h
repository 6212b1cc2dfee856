// The tensors an optimizer's eager step reads, held in C++ between steps.
//
// note [Step tables]
// A step of a model of a few thousand tensors is decided by what the host does per tensor: in
// Python, building the lists of grads (and reading `.grad` through the Python attribute), then
// boxing five lists into the dispatcher and checking every tensor again. The eager step instead
// hands the op a table (under a handle, note [Bucket handles]) that lrfused::set_step_table filled
// once per plan: the params, their states, the params whose grads it reads (`sources`; a complex
// param is read as its real view) and the params that had no grad (`watched`). Each step then:
//
// * reads every grad in C++ (`source.grad()`: no Python, no new list, no refcount). The first step
//   checks every tensor as adam_step_ checks its lists and notes each param's dtype, device, sizes
//   and strides; later steps compare the param and its grad with that note and the states' sizes
//   and dtypes (field reads), run the full checks again when anything differs, and hand the kernel
//   the pointers directly when the param, its grad and its states share the param's layout;
// * finds the pattern the table was made for: every source has a grad and no watched param has
//   one. Otherwise (a param without a grad this step, a grad of another shape, a watched param
//   that got one) it returns False before writing anything, and the optimizer makes a new plan
//   and steps through adam_step_, whose checks raise what must be raised;
// * reuses the call it gathered the last time (its vectors keep their capacity), so a step in a
//   training loop allocates nothing on the host.
//
// The table holds the state tensors the optimizer made, and after its first check reads their
// pointers from its note instead of from the tensors (each tensor touched is a cache miss or more
// per step). The optimizer makes a new table whenever its state or groups change through its own
// interface (a new plan, load_state_dict, add_param_group); a state tensor replaced by hand in
// `optimizer.state`, or resized in place, is not seen until then.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "ops.h"

namespace lrfused {

// What a param was when its table was checked: a step compares the param and its grad with it
// (plain field reads), and checks everything again when either differs.
struct TensorMeta {
  // Where the param's and its states' elements were (storage, offset, pointer): the param's is
  // compared, not read through data_ptr(), whose checks cost more than the rest of a tensor's step.
  struct Place {
    const c10::StorageImpl* storage;
    int64_t offset;
    const void* base;
    void* data;
  };
  Place param;
  Place state[kMaxStates];  // the rule's states (null data: none)
  at::ScalarType dtype;
  at::Device device;
  c10::DimVector sizes;
  c10::DimVector strides;
  int64_t numel;
  bool dense;  // non-overlapping and dense: the param, its grad and its states can share its layout
};

struct StepTable {
  std::vector<at::Tensor> sources;    // per tensor: the param whose grad is read
  std::vector<bool> complex_sources;  // read as view_as_real(grad)
  std::vector<at::Tensor> params;
  // The states the op was given, per state of the rule: each list holds the tensors of the buckets
  // that have that state, indexed by their kBucketStateBegin words.
  std::vector<at::Tensor> states[kMaxStates];
  std::vector<at::Tensor> watched;     // params with no grad when the plan was made
  std::vector<at::Tensor> real_grads;  // scratch: the real views of complex grads
  std::vector<TensorMeta> meta;        // per tensor, once the first step checked it
  bool checked = false;                // a step ran the full checks of adam_step_
  StepCall call;                       // scratch, reused by every step
  std::vector<uint8_t> bucket_states;  // scratch: per bucket, a bit per state its rule keeps
};

// What a handle keeps: the eager table (when set_step_table filled one) and the backend's cache.
struct HandleState {
  std::unique_ptr<StepTable> table;
  std::shared_ptr<void> backend;
};

}  // namespace lrfused
