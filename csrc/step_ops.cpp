// The step ops (adam_step_, sgd_step_, rmsprop_step_, adagrad_step_, table_step_, set_step_table): each gathers its
// arguments into one StepCall, checked before anything is written, and runs it on the call's device.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <optional>

#include "handle.h"
#include "ops.h"
#include "step_table.h"

namespace lrfused {

namespace {

StepRunner& cuda_runner() {
  static StepRunner runner = nullptr;
  return runner;
}

std::shared_ptr<HandleState> state_of(const std::optional<at::Tensor>& handle) {
  return handle.has_value() ? handle_state<HandleState>(*handle) : nullptr;
}

void set_amp(StepCall& call, const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
             const std::optional<at::Tensor>& invalid_steps, const char* op) {
  const at::Device device = call.words->device();
  const auto check = [&](const std::optional<at::Tensor>& t, at::ScalarType dtype, const char* name) {
    if (!t.has_value()) return;
    TORCH_CHECK(t->numel() == 1 && t->scalar_type() == dtype && t->device() == device, op, ": ", name,
                " must be a one-element ", dtype, " tensor on ", device, ", got ", t->scalar_type(), " with ",
                t->numel(), " elements on ", t->device());
  };
  check(grad_scale, at::kFloat, "grad_scale");
  check(found_inf, at::kFloat, "found_inf");
  check(invalid_steps, at::kLong, "invalid_steps");
  call.grad_scale = grad_scale.has_value() ? &*grad_scale : nullptr;
  call.found_inf = found_inf.has_value() ? &*found_inf : nullptr;
  call.invalid_steps = invalid_steps.has_value() ? &*invalid_steps : nullptr;
}

// Points each tensor at its states: for each state k its bucket has (rule_has_state), the bucket's
// j-th tensor at columns[k][row[kBucketStateBegin + k] + j].
void attach_states(const at::Tensor& rows, const at::TensorList (&columns)[kMaxStates], StepCall& call,
                   const char* op) {
  const double* row = rows.data_ptr<double>();
  for (size_t b = 0; b < call.buckets.size(); ++b, row += kBucketWords) {
    const BucketSpec& bucket = call.buckets[b];
    const auto kind = static_cast<UpdateRuleKind>(bucket.rule);
    const int64_t begin = static_cast<int64_t>(row[kBucketTensorBegin]);
    const int64_t end = static_cast<int64_t>(row[kBucketTensorEnd]);
    for (int k = 0; k < kMaxStates; ++k) {
      if (!rule_has_state(kind, bucket.flags, k)) continue;
      const at::TensorList column = columns[k];
      const double first = row[kBucketStateBegin + k];
      TORCH_CHECK(first >= 0 && first == std::floor(first) &&
                      static_cast<int64_t>(first) + (end - begin) <= static_cast<int64_t>(column.size()),
                  op, ": bucket ", b, " needs ", state_list_name(kind, k), " [", first, ", ", first + (end - begin),
                  "), but there are ", column.size());
      for (int64_t i = begin; i < end; ++i) {
        call.tensors.states[k][i] = &column[static_cast<int64_t>(first) + (i - begin)];
      }
    }
  }
}

// One call of a rule's list op (adam_step_, sgd_step_, rmsprop_step_, adagrad_step_): its state
// lists in the rule's order, every bucket of that rule.
void list_step(const char* op, UpdateRuleKind rule, at::TensorList params, at::TensorList grads,
               const at::TensorList (&columns)[kMaxStates], at::TensorList steps, const at::Tensor& buckets,
               const at::Tensor& words, at::TensorList clocks, at::TensorList rules, const at::Tensor& applied,
               const at::Tensor& pending, const std::optional<at::Tensor>& grad_scale,
               const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& invalid_steps,
               const std::optional<at::Tensor>& handle) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n, op, ": params and grads must have the same length, got ", n, " and ", grads.size());
  StepCall call;
  call.tensors.reserve(n);
  for (size_t i = 0; i < n; ++i) call.tensors.add(params[i], grads[i]);
  gather_buckets(buckets, steps, words, static_cast<int64_t>(n), call, op, static_cast<int32_t>(rule));
  attach_states(buckets, columns, call, op);
  for (size_t i = 0; i < n; ++i) check_step_tensor(call, i, op);
  gather_deferred(words, clocks, rules, applied, pending, call, op);
  set_amp(call, grad_scale, found_inf, invalid_steps, op);
  std::shared_ptr<HandleState> state = state_of(handle);
  run_step(call, state ? &state->backend : nullptr);
}

void adam_step_op(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                  at::TensorList max_exp_avg_sqs, at::TensorList steps, const at::Tensor& buckets,
                  const at::Tensor& words, at::TensorList clocks, at::TensorList rules, const at::Tensor& applied,
                  const at::Tensor& pending, const std::optional<at::Tensor>& grad_scale,
                  const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& invalid_steps,
                  const std::optional<at::Tensor>& handle) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n,
              "adam_step_: params, grads, exp_avgs and exp_avg_sqs must have the same length, got ", n, ", ",
              grads.size(), ", ", exp_avgs.size(), " and ", exp_avg_sqs.size());
  const at::TensorList columns[kMaxStates] = {exp_avgs, exp_avg_sqs, max_exp_avg_sqs};
  list_step("adam_step_", UpdateRuleKind::kAdam, params, grads, columns, steps, buckets, words, clocks, rules, applied,
            pending, grad_scale, found_inf, invalid_steps, handle);
}

void sgd_step_op(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, at::TensorList steps,
                 const at::Tensor& buckets, const at::Tensor& words, at::TensorList clocks, at::TensorList rules,
                 const at::Tensor& applied, const at::Tensor& pending, const std::optional<at::Tensor>& grad_scale,
                 const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& invalid_steps,
                 const std::optional<at::Tensor>& handle) {
  const at::TensorList columns[kMaxStates] = {momentum_buffers, {}, {}};
  list_step("sgd_step_", UpdateRuleKind::kSgd, params, grads, columns, steps, buckets, words, clocks, rules, applied,
            pending, grad_scale, found_inf, invalid_steps, handle);
}

void rmsprop_step_op(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                     at::TensorList momentum_buffers, at::TensorList grad_avgs, at::TensorList steps,
                     const at::Tensor& buckets, const at::Tensor& words, at::TensorList clocks, at::TensorList rules,
                     const at::Tensor& applied, const at::Tensor& pending, const std::optional<at::Tensor>& grad_scale,
                     const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& invalid_steps,
                     const std::optional<at::Tensor>& handle) {
  const at::TensorList columns[kMaxStates] = {square_avgs, momentum_buffers, grad_avgs};
  list_step("rmsprop_step_", UpdateRuleKind::kRmsprop, params, grads, columns, steps, buckets, words, clocks, rules,
            applied, pending, grad_scale, found_inf, invalid_steps, handle);
}

void adagrad_step_op(at::TensorList params, at::TensorList grads, at::TensorList state_sums, at::TensorList steps,
                     const at::Tensor& buckets, const at::Tensor& words, at::TensorList clocks, at::TensorList rules,
                     const at::Tensor& applied, const at::Tensor& pending, const std::optional<at::Tensor>& grad_scale,
                     const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& invalid_steps,
                     const std::optional<at::Tensor>& handle) {
  const at::TensorList columns[kMaxStates] = {state_sums, {}, {}};
  list_step("adagrad_step_", UpdateRuleKind::kAdagrad, params, grads, columns, steps, buckets, words, clocks, rules,
            applied, pending, grad_scale, found_inf, invalid_steps, handle);
}

void set_step_table_op(const at::Tensor& handle, at::TensorList sources, at::TensorList params, at::TensorList states0,
                       at::TensorList states1, at::TensorList states2, at::TensorList watched) {
  const size_t n = params.size();
  TORCH_CHECK(sources.size() == n, "set_step_table: sources and params must have the same length, got ", sources.size(),
              " and ", n);
  auto table = std::make_unique<StepTable>();
  table->sources.assign(sources.begin(), sources.end());
  for (const at::Tensor& source : sources) table->complex_sources.push_back(source.is_complex());
  table->params.assign(params.begin(), params.end());
  table->states[0].assign(states0.begin(), states0.end());
  table->states[1].assign(states1.begin(), states1.end());
  table->states[2].assign(states2.begin(), states2.end());
  table->watched.assign(watched.begin(), watched.end());
  table->real_grads.resize(n);
  table->call.tensors.reserve(n);
  table->call.tensor_bucket.reserve(n);
  handle_state<HandleState>(handle)->table = std::move(table);
}

// Where a tensor's elements are, for its table's note.
TensorMeta::Place place_of(const at::Tensor* t) {
  if (t == nullptr) return {nullptr, 0, nullptr, nullptr};
  const c10::TensorImpl* impl = t->unsafeGetTensorImpl();
  const c10::StorageImpl* storage = impl->unsafe_storage().unsafeGetStorageImpl();
  return {storage, impl->storage_offset(), storage != nullptr ? storage->data() : nullptr, t->data_ptr()};
}

// The pointer of a tensor still where `place` saw it, else null.
void* still_at(const at::Tensor& t, const TensorMeta::Place& place) {
  const c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  const c10::StorageImpl* storage = impl->unsafe_storage().unsafeGetStorageImpl();
  return storage == place.storage && impl->storage_offset() == place.offset && storage->data() == place.base
             ? place.data
             : nullptr;
}

bool same_dims(at::IntArrayRef a, const c10::DimVector& b) {
  if (a.size() != b.size()) return false;
  for (size_t d = 0; d < a.size(); ++d) {
    if (a[d] != b[d]) return false;
  }
  return true;
}

// A tensor's first element, read from its storage (Tensor::data_ptr checks, out of line, what a
// tensor that passed the table's comparisons already is).
void* first_element(const c10::TensorImpl* impl) {
  return static_cast<char*>(impl->unsafe_storage().unsafeGetStorageImpl()->mutable_data()) +
         impl->storage_offset() * static_cast<int64_t>(impl->itemsize());
}

enum class Gathered { kFast, kChecked, kRefused };

// The fast gather: every param and grad as the last full check noted it (note [Step tables]).
// kChecked when one differs (the full gather then runs), kRefused when the grads no longer fit.
Gathered gather_noted(StepTable& t) {
  StepCall& call = t.call;
  const size_t n = t.params.size();
  call.raw.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    // TensorImpl::grad, not Tensor::grad: the latter also asks autograd whether a param without a
    // grad is a leaf, to warn.
    const at::Tensor& grad = t.sources[i].unsafeGetTensorImpl()->grad();
    if (!grad.defined() || grad.is_sparse()) return Gathered::kRefused;
    if (t.complex_sources[i]) return Gathered::kChecked;  // its real view is made by the full gather
    const at::Tensor& param = t.params[i];
    const TensorMeta& m = t.meta[i];
    const c10::TensorImpl* p = param.unsafeGetTensorImpl();
    const c10::TensorImpl* g = grad.unsafeGetTensorImpl();
    // The param may have moved (`p.data = ...`): compared. The states are the optimizer's own,
    // held by this table and replaced only with a new one: not touched.
    void* param_data = still_at(param, m.param);
    if (!(m.dense && param_data != nullptr && param.scalar_type() == m.dtype && grad.scalar_type() == m.dtype &&
          p->device() == m.device && g->device() == m.device && same_dims(p->sizes(), m.sizes) &&
          same_dims(g->sizes(), m.sizes) && same_dims(p->strides(), m.strides) && same_dims(g->strides(), m.strides))) {
      return Gathered::kChecked;
    }
    // The states are set by the caller, for the buckets that have them.
    call.raw.push_back({param_data, first_element(g), {nullptr, nullptr, nullptr}, m.numel, 0, 0});
    call.tensors.params.push_back(&param);  // the buckets' dtypes and the count are read from it
  }
  return Gathered::kFast;
}

// The grads of the table's tensors, or false when they no longer match it (note [Step tables]).
// `fast`: the pointers are in `call.raw`, every tensor as the last full check saw it.
bool gather_table(StepTable& t, bool& fast) {
  for (const at::Tensor& w : t.watched) {
    if (w.unsafeGetTensorImpl()->grad().defined()) return false;
  }
  StepCall& call = t.call;
  call.clear();
  fast = false;
  if (t.checked) {
    switch (gather_noted(t)) {
      case Gathered::kFast: fast = true; return true;
      case Gathered::kRefused: return false;
      case Gathered::kChecked: call.clear(); break;
    }
  }
  const size_t n = t.params.size();
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& grad = t.sources[i].unsafeGetTensorImpl()->grad();
    if (!grad.defined() || grad.is_sparse()) return false;
    const at::Tensor* read = &grad;
    if (t.complex_sources[i]) {
      if (!grad.is_complex()) return false;
      t.real_grads[i] = at::view_as_real(grad);
      read = &t.real_grads[i];
    }
    const at::Tensor& param = t.params[i];
    if (read->sizes() != param.sizes() || read->scalar_type() != param.scalar_type() ||
        read->device() != param.device()) {
      return false;
    }
    call.tensors.add(param, *read);
  }
  return true;
}

// Notes what the full checks accepted (note [Step tables]).
void note_checked(StepTable& t) {
  t.meta.clear();
  t.meta.reserve(t.params.size());
  const StepCall& call = t.call;
  for (size_t i = 0; i < t.params.size(); ++i) {
    const at::Tensor& p = t.params[i];
    bool dense = p.is_non_overlapping_and_dense();
    TensorMeta meta{
        place_of(&p), {},   p.scalar_type(), p.device(), c10::DimVector(p.sizes()), c10::DimVector(p.strides()),
        p.numel(),    false};
    for (int k = 0; k < kMaxStates; ++k) {
      const at::Tensor* state = call.tensors.states[k][i];
      dense = dense && (state == nullptr || state->strides() == p.strides());
      meta.state[k] = place_of(state);
    }
    meta.dense = dense;
    t.meta.push_back(std::move(meta));
  }
  t.checked = true;
}

bool table_step_op(const at::Tensor& handle, const at::Tensor& buckets, at::TensorList steps, const at::Tensor& words,
                   at::TensorList clocks, at::TensorList rules, const at::Tensor& applied, const at::Tensor& pending,
                   const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                   const std::optional<at::Tensor>& invalid_steps) {
  std::shared_ptr<HandleState> state = handle_state<HandleState>(handle);
  TORCH_CHECK(state->table != nullptr, "table_step_: no table was set for this handle (lrfused::set_step_table)");
  StepTable& t = *state->table;
  bool fast = false;
  if (!gather_table(t, fast)) {
    // Leaves no dangling pointers to grads behind.
    t.call.clear();
    return false;
  }
  StepCall& call = t.call;
  const size_t n = call.tensors.size();
  gather_buckets(buckets, steps, words, static_cast<int64_t>(n), call, "table_step_", -1);
  if (fast) {
    // The param, its grad and its states share its layout and are where the last full check saw
    // them: the states' pointers from the note, for the states each bucket has (asked once a bucket).
    std::vector<uint8_t>& has_states = t.bucket_states;
    has_states.assign(call.buckets.size(), 0);
    for (size_t b = 0; b < call.buckets.size(); ++b) {
      for (int k = 0; k < kMaxStates; ++k) {
        if (rule_has_state(static_cast<UpdateRuleKind>(call.buckets[b].rule), call.buckets[b].flags, k)) {
          has_states[b] |= static_cast<uint8_t>(1 << k);
        }
      }
    }
    for (size_t i = 0; i < n; ++i) {
      const int32_t b = call.tensor_bucket[i];
      for (int k = 0; k < kMaxStates; ++k) {
        if (!(has_states[b] & (1 << k))) continue;
        call.raw[i].state[k] = t.meta[i].state[k].data;
        TORCH_CHECK(call.raw[i].state[k] != nullptr, "table_step_: tensor ", i, " had no ",
                    state_list_name(static_cast<UpdateRuleKind>(call.buckets[b].rule), k),
                    " entry when its table was checked");
      }
      call.raw[i].bucket = b;
    }
  } else {
    const at::TensorList columns[kMaxStates] = {t.states[0], t.states[1], t.states[2]};
    attach_states(buckets, columns, call, "table_step_");
    call.raw.clear();
    for (size_t i = 0; i < n; ++i) check_step_tensor(call, i, "table_step_");
    note_checked(t);
  }
  gather_deferred(words, clocks, rules, applied, pending, call, "table_step_");
  set_amp(call, grad_scale, found_inf, invalid_steps, "table_step_");
  run_step(call, &state->backend);
  call.clear();
  return true;
}

}  // namespace

bool register_cuda_step_runner(StepRunner runner) {
  cuda_runner() = runner;
  return true;
}

void run_step(StepCall& call, std::shared_ptr<void>* state) {
  const at::Device device = call.words->device();
  if (device.is_cpu()) {
    run_step_cpu(call);
    return;
  }
  TORCH_CHECK(device.is_cuda() && cuda_runner() != nullptr, "lrfused: no step kernel for device ", device,
              " (this build of lrfused has ", cuda_runner() != nullptr ? "" : "no ", "CUDA kernels)");
  cuda_runner()(call, state);
}

TORCH_LIBRARY_IMPL(lrfused, CompositeExplicitAutograd, m) {
  m.impl("adam_step_", &adam_step_op);
  m.impl("sgd_step_", &sgd_step_op);
  m.impl("rmsprop_step_", &rmsprop_step_op);
  m.impl("adagrad_step_", &adagrad_step_op);
  m.impl("table_step_", &table_step_op);
  m.impl("set_step_table", &set_step_table_op);
}

}  // namespace lrfused
