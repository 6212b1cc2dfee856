// The op schemas of lrfused, the argument checks shared by every backend, and the module init
// that lets `import lrfused._C` run the static registrations below.
#include <Python.h>

#include <ATen/ATen.h>
#include <c10/util/strides.h>
#include <torch/library.h>

#include "common/lr_schedule.h"
#include "common/lr_step.h"
#include "handle.h"
#include "ops.h"

extern "C" {
// An empty module: importing it loads the library, whose initialisers register the ops.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace lrfused {

namespace {

void check_same_shape(const at::Tensor& param, const at::Tensor& other, const char* what, size_t i) {
  TORCH_CHECK(other.device() == param.device(), "fused_adam_: ", what, "[", i, "] is on ", other.device(),
              " but params[", i, "] is on ", param.device());
  TORCH_CHECK(other.scalar_type() == param.scalar_type(), "fused_adam_: ", what, "[", i, "] has dtype ",
              other.scalar_type(), " but params[", i, "] has dtype ", param.scalar_type());
  TORCH_CHECK(other.sizes() == param.sizes(), "fused_adam_: ", what, "[", i, "] has shape ", other.sizes(),
              " but params[", i, "] has shape ", param.sizes());
}

}  // namespace

void check_fused_adam_args(const FusedAdamArgs& a) {
  const size_t n = a.params.size();
  TORCH_CHECK(a.grads.size() == n && a.exp_avgs.size() == n && a.exp_avg_sqs.size() == n,
              "fused_adam_: params, grads, exp_avgs and exp_avg_sqs must have the same length, got ", n, ", ",
              a.grads.size(), ", ", a.exp_avgs.size(), " and ", a.exp_avg_sqs.size());
  TORCH_CHECK(!a.amsgrad || a.max_exp_avg_sqs.size() == n,
              "fused_adam_: amsgrad=True needs one max_exp_avg_sq per param, got ", a.max_exp_avg_sqs.size(),
              " for ", n, " params");
  TORCH_CHECK(a.beta1 >= 0.0 && a.beta1 < 1.0, "fused_adam_: invalid beta1: ", a.beta1);
  TORCH_CHECK(a.beta2 >= 0.0 && a.beta2 < 1.0, "fused_adam_: invalid beta2: ", a.beta2);
  TORCH_CHECK(a.eps >= 0.0 && std::isfinite(a.eps), "fused_adam_: invalid eps: ", a.eps);
  TORCH_CHECK(a.weight_decay >= 0.0 && std::isfinite(a.weight_decay),
              "fused_adam_: invalid weight_decay: ", a.weight_decay);

  TORCH_CHECK(a.step.scalar_type() == at::kLong && a.step.numel() == 1,
              "fused_adam_: step must be a one-element int64 tensor, got ", a.step.scalar_type(), " with ",
              a.step.numel(), " elements");
  TORCH_CHECK(a.schedule.scalar_type() == at::kDouble && a.schedule.dim() == 1 && a.schedule.is_contiguous(),
              "fused_adam_: schedule must be a contiguous 1-d float64 tensor, got ", a.schedule.scalar_type(),
              " of shape ", a.schedule.sizes());
  TORCH_CHECK(a.schedule.numel() >= 2, "fused_adam_: schedule is empty");
  if (a.clock.has_value()) {
    TORCH_CHECK(a.clock->scalar_type() == at::kLong && a.clock->numel() == 1,
                "fused_adam_: clock must be a one-element int64 tensor, got ", a.clock->scalar_type(), " with ",
                a.clock->numel(), " elements");
  }
  if (a.grad_scale.has_value()) {
    TORCH_CHECK(a.grad_scale->numel() == 1 && a.grad_scale->scalar_type() == at::kFloat,
                "fused_adam_: grad_scale must be a one-element float32 tensor, got ", a.grad_scale->scalar_type(),
                " with ", a.grad_scale->numel(), " elements");
  }
  if (a.found_inf.has_value()) {
    TORCH_CHECK(a.found_inf->numel() == 1 && a.found_inf->scalar_type() == at::kFloat,
                "fused_adam_: found_inf must be a one-element float32 tensor, got ", a.found_inf->scalar_type(),
                " with ", a.found_inf->numel(), " elements");
  }
  if (a.invalid_steps.has_value()) {
    TORCH_CHECK(a.invalid_steps->numel() == 1 && a.invalid_steps->scalar_type() == at::kLong,
                "fused_adam_: invalid_steps must be a one-element int64 tensor, got ",
                a.invalid_steps->scalar_type(), " with ", a.invalid_steps->numel(), " elements");
  }
  if (n == 0) {
    return;
  }
  const at::Tensor& first = a.params[0];
  const auto scalar_tensors_ok = [&](const at::Tensor& t, const char* what) {
    TORCH_CHECK(t.device() == first.device(), "fused_adam_: ", what, " is on ", t.device(),
                " but the params are on ", first.device());
  };
  scalar_tensors_ok(a.step, "step");
  scalar_tensors_ok(a.schedule, "schedule");
  if (a.clock.has_value()) scalar_tensors_ok(*a.clock, "clock");
  if (a.grad_scale.has_value()) scalar_tensors_ok(*a.grad_scale, "grad_scale");
  if (a.found_inf.has_value()) scalar_tensors_ok(*a.found_inf, "found_inf");
  if (a.invalid_steps.has_value()) scalar_tensors_ok(*a.invalid_steps, "invalid_steps");

  const auto dtype = first.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "fused_adam_: params must be float32, float16 or bfloat16, got ", dtype);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = a.params[i];
    TORCH_CHECK(p.device() == first.device(), "fused_adam_: params[", i, "] is on ", p.device(),
                " but params[0] is on ", first.device());
    TORCH_CHECK(p.scalar_type() == dtype, "fused_adam_: params[", i, "] has dtype ", p.scalar_type(),
                " but params[0] has dtype ", dtype);
    TORCH_CHECK(!p.is_sparse() && !a.grads[i].is_sparse(), "fused_adam_: sparse tensors are not supported (params[",
                i, "])");
    check_same_shape(p, a.grads[i], "grads", i);
    check_same_shape(p, a.exp_avgs[i], "exp_avgs", i);
    check_same_shape(p, a.exp_avg_sqs[i], "exp_avg_sqs", i);
    if (a.amsgrad) {
      check_same_shape(p, a.max_exp_avg_sqs[i], "max_exp_avg_sqs", i);
    }
  }
}

WorkingLayout::WorkingLayout(const FusedAdamArgs& a) : args_(a) {
  const at::TensorList lists[kLists] = {a.params, a.grads, a.exp_avgs, a.exp_avg_sqs, a.max_exp_avg_sqs};
  const int used = a.amsgrad ? kLists : kMaxExpAvgSqs;
  for (size_t i = 0; i < a.params.size(); ++i) {
    const at::Tensor& p = a.params[i];
    const bool dense = p.is_non_overlapping_and_dense();
    // The layout the five share: the param's, or contiguous when the param is not dense.
    const at::IntArrayRef sizes = p.sizes();
    c10::DimVector contiguous;
    if (!dense) {
      contiguous = c10::contiguous_strides(sizes);
    }
    const at::IntArrayRef strides = dense ? p.strides() : at::IntArrayRef(contiguous);
    for (int list = 0; list < used; ++list) {
      const at::Tensor& t = lists[list][i];
      if (t.strides() == strides && (list != kParams || dense)) continue;
      std::vector<at::Tensor>& copies = copies_[list];
      if (copies.empty()) copies.resize(a.params.size());
      copies[i] = at::empty_strided(sizes, strides, t.options()).copy_(t);
    }
  }
}

void WorkingLayout::write_back() const {
  const at::TensorList lists[kLists] = {args_.params, args_.grads, args_.exp_avgs, args_.exp_avg_sqs,
                                        args_.max_exp_avg_sqs};
  for (int list = 0; list < kLists; ++list) {
    if (list == kGrads && !args_.grad_scale.has_value()) continue;
    const std::vector<at::Tensor>& copies = copies_[list];
    for (size_t i = 0; i < copies.size(); ++i) {
      if (copies[i].defined()) lists[list][i].copy_(copies[i]);
    }
  }
}

void check_schedule_program(const at::Tensor& schedule) {
  TORCH_CHECK(schedule.device().is_cpu(), "check_schedule_program needs a CPU tensor");
  const char* error = validate_schedule(schedule.data_ptr<double>(), schedule.numel());
  TORCH_CHECK(error == nullptr, "fused_adam_: malformed schedule: ", error);
}

int64_t check_advance_lr_args(const at::Tensor& groups, const at::Tensor& clock, const at::Tensor& rules) {
  TORCH_CHECK(groups.scalar_type() == at::kDouble && groups.dim() == 1 && groups.is_contiguous() &&
                  groups.numel() % kHeldWords == 0,
              "advance_lr_: groups must be a contiguous 1-d float64 tensor of ", kHeldWords,
              " words per param group, got ", groups.scalar_type(), " of shape ", groups.sizes());
  TORCH_CHECK(clock.scalar_type() == at::kLong && clock.numel() == 1,
              "advance_lr_: clock must be a one-element int64 tensor, got ", clock.scalar_type(), " with ",
              clock.numel(), " elements");
  TORCH_CHECK(rules.scalar_type() == at::kDouble && rules.dim() == 1 && rules.is_contiguous(),
              "advance_lr_: rules must be a contiguous 1-d float64 tensor, got ", rules.scalar_type(), " of shape ",
              rules.sizes());
  TORCH_CHECK(clock.device() == groups.device() && rules.device() == groups.device(),
              "advance_lr_: groups, clock and rules must be on one device, got ", groups.device(), ", ",
              clock.device(), " and ", rules.device());
  return groups.numel() / kHeldWords;
}

void check_rules(const at::Tensor& rules, int64_t group_count) {
  TORCH_CHECK(rules.device().is_cpu(), "check_rules needs a CPU tensor");
  const char* error = validate_rules(rules.data_ptr<double>(), rules.numel(), group_count);
  TORCH_CHECK(error == nullptr, "advance_lr_: malformed rules: ", error);
}

namespace {

void validate_rules_op(const at::Tensor& rules, int64_t group_count) {
  TORCH_CHECK(rules.scalar_type() == at::kDouble && rules.dim() == 1,
              "validate_rules: rules must be a 1-d float64 tensor, got ", rules.scalar_type(), " of shape ",
              rules.sizes());
  check_rules(rules.cpu().contiguous(), group_count);
}

std::vector<double> evaluate_schedule_op(const at::Tensor& schedule, int64_t t) {
  TORCH_CHECK(schedule.scalar_type() == at::kDouble && schedule.dim() == 1,
              "evaluate_schedule: schedule must be a 1-d float64 tensor, got ", schedule.scalar_type(), " of shape ",
              schedule.sizes());
  const at::Tensor host = schedule.cpu().contiguous();
  check_schedule_program(host);
  const ScheduleValue v = evaluate_schedule(host.data_ptr<double>(), t);
  return {v.lr, v.beta1};
}

// This library's side of the schedule encoding, compared with lrfused/schedules/_layout.py by the
// tests: the kind count, the depth limit, the CyclicLR mode count, then per kind its NodeLayout.
std::vector<int64_t> schedule_encoding_op() {
  std::vector<int64_t> rows = {kNumScheduleKinds, kMaxScheduleDepth, kNumCyclicModes};
  for (int64_t kind = 0; kind < kNumScheduleKinds; ++kind) {
    const NodeLayout& layout = kNodeLayouts[kind];
    rows.insert(rows.end(), {kind, layout.fixed_words, layout.tail_count_word, layout.tail_adjust, layout.child_word,
                             layout.child_if_at_least});
  }
  return rows;
}

}  // namespace

TORCH_LIBRARY(lrfused, m) {
  m.def(
      "fused_adam_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs, "
      "Tensor(e!)[] max_exp_avg_sqs, Tensor(f!) step, Tensor? clock, Tensor schedule, *, float beta1, "
      "float beta2, float eps, float weight_decay, bool decoupled_weight_decay, bool amsgrad, bool maximize, "
      "Tensor? grad_scale=None, Tensor? found_inf=None, Tensor(g!)? invalid_steps=None, Tensor? handle=None) -> ()");
  // A bucket's handle (note [Bucket handles] in handle.h).
  // Tagged so that no compiler pass may merge two calls (each bucket needs a handle of its own);
  // torch 2.13's aot_eager and inductor keep them apart even without the tag.
  m.def("new_handle() -> Tensor", {at::Tag::nondeterministic_seeded});
  m.impl("new_handle", c10::DispatchKey::CompositeExplicitAutograd, &new_handle);
  m.def("evaluate_schedule(Tensor schedule, int t) -> float[]");
  m.impl("evaluate_schedule", c10::DispatchKey::CompositeExplicitAutograd, &evaluate_schedule_op);
  m.def("schedule_encoding() -> int[]");
  m.impl("schedule_encoding", c10::DispatchKey::CompositeExplicitAutograd, &schedule_encoding_op);
  // One scheduler step on the device (note [Scheduler steps on the device] in common/lr_step.h):
  // the clock moves to clock + 1 (or to `epoch`) and each group's HELD words follow its rule.
  m.def("advance_lr_(Tensor(a!) groups, Tensor(b!) clock, Tensor rules, int? epoch=None) -> ()");
  m.def("validate_rules(Tensor rules, int group_count) -> ()");
  m.impl("validate_rules", c10::DispatchKey::CompositeExplicitAutograd, &validate_rules_op);
}

}  // namespace lrfused
