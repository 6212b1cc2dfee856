// The op schemas of lrfused, the argument checks shared by every backend, and the module init
// that lets `import lrfused._C` run the static registrations below.
#include <Python.h>

#include <ATen/ATen.h>
#include <c10/util/strides.h>
#include <torch/library.h>

#include <cstring>
#include <string>
#include <utility>

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

void StepTensors::clear() {
  params.clear();
  grads.clear();
  for (auto& column : states) column.clear();
}

void StepTensors::reserve(size_t n) {
  params.reserve(n);
  grads.reserve(n);
  for (auto& column : states) column.reserve(n);
}

void StepTensors::add(const at::Tensor& param, const at::Tensor& grad,
                      std::initializer_list<const at::Tensor*> tensor_states) {
  params.push_back(&param);
  grads.push_back(&grad);
  auto state = tensor_states.begin();
  for (auto& column : states) column.push_back(state != tensor_states.end() ? *state++ : nullptr);
}

const std::vector<const at::Tensor*>& WorkingLayout::column(int c) const {
  if (c == kParams) return tensors_.params;
  if (c == kGrads) return tensors_.grads;
  return tensors_.states[c - kStates];
}

WorkingLayout::WorkingLayout(const StepTensors& tensors, bool grads_written)
    : tensors_(tensors), grads_written_(grads_written) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& p = *tensors.params[i];
    const bool dense = p.is_non_overlapping_and_dense();
    // The layout the arrays share: the param's, or contiguous when the param is not dense.
    const at::IntArrayRef sizes = p.sizes();
    c10::DimVector contiguous;
    if (!dense) {
      contiguous = c10::contiguous_strides(sizes);
    }
    const at::IntArrayRef strides = dense ? p.strides() : at::IntArrayRef(contiguous);
    for (int c = 0; c < kColumns; ++c) {
      const at::Tensor* t = column(c)[i];
      if (t == nullptr || (t->strides() == strides && (c != kParams || dense))) continue;
      std::vector<at::Tensor>& copies = copies_[c];
      if (copies.empty()) copies.resize(tensors.size());
      copies[i] = at::empty_strided(sizes, strides, t->options()).copy_(*t);
    }
  }
}

void WorkingLayout::write_back() const {
  for (int c = 0; c < kColumns; ++c) {
    if (c == kGrads && !grads_written_) continue;
    const std::vector<at::Tensor>& copies = copies_[c];
    for (size_t i = 0; i < copies.size(); ++i) {
      if (copies[i].defined()) const_cast<at::Tensor&>(*column(c)[i]).copy_(copies[i]);
    }
  }
}

void StepCall::clear() {
  tensors.clear();
  raw.clear();
  tensor_bucket.clear();
  buckets.clear();
  deferred = DeferredSteps{};
  grad_scale = found_inf = invalid_steps = words = nullptr;
}

const std::vector<TensorEntry>& raw_tensors(StepCall& call, std::unique_ptr<WorkingLayout>& layout) {
  if (call.raw.size() == call.tensors.size()) return call.raw;
  layout = std::make_unique<WorkingLayout>(call.tensors, call.grad_scale != nullptr);
  call.raw.clear();
  call.raw.reserve(call.tensors.size());
  for (size_t i = 0; i < call.tensors.size(); ++i) {
    TensorEntry entry{layout->param(i), layout->grad(i), {}, call.tensors.params[i]->numel(), 0, call.tensor_bucket[i]};
    for (int k = 0; k < kMaxStates; ++k) entry.state[k] = layout->state(k, i);
    call.raw.push_back(entry);
  }
  return call.raw;
}

ElementType element_type_of(at::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf: return ElementType::kFloat16;
    case at::kBFloat16: return ElementType::kBFloat16;
    case at::kDouble: return ElementType::kFloat64;
    default: return ElementType::kFloat32;
  }
}

namespace {

bool whole_in(double x, double low, double high) { return x >= low && x <= high && x == std::floor(x); }

}  // namespace

namespace {

const char* const kRuleNames[kNumUpdateRules] = {"Adam", "SGD", "RMSprop", "Adagrad"};
// The names of the momentum and decay words by rule (BucketWord's table), for the messages.
const char* const kMomentumNames[kNumUpdateRules] = {"beta1", "momentum", "momentum", "momentum word"};
const char* const kDecayNames[kNumUpdateRules] = {"beta2", "dampening", "alpha", "lr_decay"};

// Whether a row's decay word is one its rule can step with: torch's constructor ranges (Adam's
// beta2 in [0, 1), RMSprop's alpha >= 0, Adagrad's lr_decay >= 0; SGD's dampening is unchecked
// by torch, any finite one here).
bool valid_decay(UpdateRuleKind kind, double decay) {
  if (!std::isfinite(decay)) return false;
  switch (kind) {
    case UpdateRuleKind::kAdam: return decay >= 0.0 && decay < 1.0;
    case UpdateRuleKind::kSgd: return true;
    default: return decay >= 0.0;
  }
}

}  // namespace

const char* state_list_name(UpdateRuleKind kind, int k) {
  static const char* const names[kNumUpdateRules][kMaxStates] = {
      {"exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"},
      {"momentum_buffers", "", ""},
      {"square_avgs", "momentum_buffers", "grad_avgs"},
      {"state_sums", "", ""},
  };
  return names[static_cast<int>(kind)][k];
}

void gather_buckets(const at::Tensor& rows, at::TensorList steps, const at::Tensor& words, int64_t tensor_count,
                    StepCall& call, const char* op, int32_t only_rule) {
  TORCH_CHECK(rows.device().is_cpu() && rows.scalar_type() == at::kDouble && rows.dim() == 2 &&
                  rows.size(1) == kBucketWords && rows.is_contiguous(),
              op, ": buckets must be a contiguous CPU float64 tensor of ", kBucketWords, " words per bucket, got ",
              rows.scalar_type(), " of shape ", rows.sizes(), " on ", rows.device());
  TORCH_CHECK(words.scalar_type() == at::kDouble && words.dim() == 1 && words.is_contiguous(), op,
              ": words must be a contiguous 1-d float64 tensor, got ", words.scalar_type(), " of shape ",
              words.sizes());
  const int64_t count = rows.size(0);
  TORCH_CHECK(static_cast<int64_t>(steps.size()) == count, op, ": ", count, " buckets need ", count,
              " step counters, got ", steps.size());
  const double* r = rows.data_ptr<double>();
  const int64_t word_count = words.numel();
  double* base = words.data_ptr<double>();
  int64_t expected_begin = 0;
  for (int64_t b = 0; b < count; ++b, r += kBucketWords) {
    const at::Tensor& step = steps[b];
    TORCH_CHECK(step.scalar_type() == at::kLong && step.numel() == 1 && step.device() == words.device(), op, ": steps[",
                b, "] must be a one-element int64 tensor on ", words.device(), ", got ", step.scalar_type(), " with ",
                step.numel(), " elements on ", step.device());
    TORCH_CHECK(r[kBucketTensorBegin] == static_cast<double>(expected_begin) &&
                    whole_in(r[kBucketTensorEnd], r[kBucketTensorBegin], static_cast<double>(tensor_count)),
                op, ": bucket ", b, " covers tensors [", r[kBucketTensorBegin], ", ", r[kBucketTensorEnd],
                "); the buckets must cover the ", tensor_count, " tensors in order");
    expected_begin = static_cast<int64_t>(r[kBucketTensorEnd]);
    TORCH_CHECK(whole_in(r[kBucketRule], 0, kNumUpdateRules - 1) &&
                    (only_rule < 0 || r[kBucketRule] == static_cast<double>(only_rule)),
                op, ": bucket ", b, ": invalid update rule: ", r[kBucketRule],
                only_rule < 0 ? "" : std::string(" (this op runs ") + kRuleNames[only_rule] + ")");
    const auto kind = static_cast<UpdateRuleKind>(static_cast<int32_t>(r[kBucketRule]));
    const int rule = static_cast<int>(kind);
    // Any finite momentum, as torch steps with any that a scheduler wrote (note [Unusable schedule values]).
    TORCH_CHECK(std::isfinite(r[kBucketMomentum]), op, ": bucket ", b, ": invalid ", kMomentumNames[rule], ": ",
                r[kBucketMomentum]);
    TORCH_CHECK(valid_decay(kind, r[kBucketDecay]), op, ": bucket ", b, ": invalid ", kDecayNames[rule], ": ",
                r[kBucketDecay]);
    TORCH_CHECK(r[kBucketEps] >= 0.0 && std::isfinite(r[kBucketEps]), op, ": bucket ", b,
                ": invalid eps: ", r[kBucketEps]);
    TORCH_CHECK(r[kBucketWeightDecay] >= 0.0 && std::isfinite(r[kBucketWeightDecay]), op, ": bucket ", b,
                ": invalid weight_decay: ", r[kBucketWeightDecay]);
    const double flags = r[kBucketFlags];
    TORCH_CHECK(whole_in(flags, 0, 63) && (static_cast<int32_t>(flags) & ~rule_flags(kind)) == 0, op, ": bucket ", b,
                ": invalid flags for ", kRuleNames[rule], ": ", flags);
    const double group = r[kBucketGroup];
    TORCH_CHECK(group == -1.0 || whole_in(group, 0, static_cast<double>(word_count / kHeldWords - 1)), op, ": bucket ",
                b, ": invalid group: ", group);
    TORCH_CHECK(whole_in(r[kBucketProgram], 0, static_cast<double>(word_count - 2)), op, ": bucket ", b,
                ": program offset ", r[kBucketProgram], " is outside the ", word_count, " words");
    const int64_t program = static_cast<int64_t>(r[kBucketProgram]);
    TORCH_CHECK(group < 0 || program == static_cast<int64_t>(group) * kHeldWords, op, ": bucket ", b, ": group ", group,
                "'s HELD node is at ", static_cast<int64_t>(group) * kHeldWords, ", not ", program);
    BucketSpec spec{};
    spec.step = step.data_ptr<int64_t>();
    spec.program = base + program;
    spec.group = static_cast<int64_t>(group);
    spec.momentum = r[kBucketMomentum];
    spec.decay = r[kBucketDecay];
    spec.eps = r[kBucketEps];
    spec.weight_decay = r[kBucketWeightDecay];
    spec.rule = rule;
    spec.flags = static_cast<int32_t>(flags);
    // The tensors are gathered first: the bucket's dtype is its first tensor's.
    const int64_t begin = static_cast<int64_t>(r[kBucketTensorBegin]);
    spec.element_type =
        static_cast<int32_t>(element_type_of(begin < expected_begin && static_cast<size_t>(begin) < call.tensors.size()
                                                 ? call.tensors.params[begin]->scalar_type()
                                                 : at::kFloat));
    call.buckets.push_back(spec);
    for (int64_t i = static_cast<int64_t>(r[kBucketTensorBegin]); i < expected_begin; ++i) {
      call.tensor_bucket.push_back(static_cast<int32_t>(b));
    }
  }
  TORCH_CHECK(expected_begin == tensor_count, op, ": the buckets cover ", expected_begin, " of the ", tensor_count,
              " tensors");
  if (words.device().is_cpu()) {
    // The device trusts what the host validated when it built the words; here it costs nothing.
    for (const BucketSpec& spec : call.buckets) {
      const int64_t offset = spec.program - base;
      const double length = spec.program[1];
      TORCH_CHECK(whole_in(length, 2, static_cast<double>(word_count - offset)), op, ": the program at word ", offset,
                  " has length ", length, ", beyond the ", word_count, " words");
      const char* error = validate_schedule(spec.program, static_cast<int64_t>(length));
      TORCH_CHECK(error == nullptr, op, ": malformed program at word ", offset, ": ", error);
    }
  }
  call.words = &words;
}

// note [Host writes]: the writes the `pending` header carries, checked (a position inside the
// words, on a HELD node's lr or beta1 word; a sequence number after the call's deferred steps).
static void gather_host_writes(const at::Tensor& words, const int64_t* header, int64_t header_words, int64_t count,
                               DeferredSteps& d, const char* op) {
  d.write_count = 0;
  d.write_sequence = 0;
  if (header_words < kPendingWrites) return;
  const int64_t writes = header[kPendingWriteCount];
  TORCH_CHECK(writes >= 0 && writes <= kMaxHostWrites && header_words >= kPendingWrites + 2 * writes, op,
              ": pending carries ", writes, " host writes; at most ", kMaxHostWrites, " fit in its ", header_words,
              " words");
  if (writes == 0) return;
  TORCH_CHECK(words.numel() % kHeldWords == 0, op, ": host writes need words of HELD nodes");
  const int64_t sequence = header[kPendingWriteSequence];
  TORCH_CHECK(count == 0 || sequence >= d.first_sequence + count, op, ": the host writes' sequence number ", sequence,
              " must come after the call's ", count, " deferred steps (from ", d.first_sequence, ")");
  d.write_sequence = sequence;
  for (int64_t w = 0; w < writes; ++w) {
    const int64_t position = header[kPendingWrites + 2 * w];
    const int64_t word = position % kHeldWords;
    TORCH_CHECK(position >= 0 && position < words.numel() && (word == kHeldLr || word == kHeldBeta1), op,
                ": host write ", w, " is at word ", position, ", not the lr or beta1 word of one of the ",
                words.numel() / kHeldWords, " groups");
    double value;
    std::memcpy(&value, &header[kPendingWrites + 2 * w + 1], sizeof(value));
    d.write_group[w] = static_cast<int32_t>(position / kHeldWords);
    d.write_word[w] = static_cast<int32_t>(word);
    d.write_value[w] = value;
  }
  d.write_count = static_cast<int32_t>(writes);
}

void gather_deferred(const at::Tensor& words, at::TensorList clocks, at::TensorList rules, const at::Tensor& applied,
                     const at::Tensor& pending, StepCall& call, const char* op) {
  const int64_t count = static_cast<int64_t>(rules.size());
  TORCH_CHECK(count <= kMaxDeferredSteps && static_cast<int64_t>(clocks.size()) <= count, op, ": at most ",
              kMaxDeferredSteps, " deferred steps and one clock per step, got ", count, " rules and ", clocks.size(),
              " clocks");
  TORCH_CHECK(applied.scalar_type() == at::kLong && applied.numel() == 1 && applied.device() == words.device(), op,
              ": applied must be a one-element int64 tensor on ", words.device(), ", got ", applied.scalar_type(),
              " with ", applied.numel(), " elements on ", applied.device());
  TORCH_CHECK(pending.device().is_cpu() && pending.scalar_type() == at::kLong && pending.dim() == 1 &&
                  pending.is_contiguous() && pending.numel() >= 1 + count,
              op, ": pending must be a contiguous CPU int64 tensor of at least ", 1 + count,
              " words (the first sequence number, then each step's clock), got ", pending.scalar_type(), " of shape ",
              pending.sizes(), " on ", pending.device());
  const int64_t group_count = words.numel() / kHeldWords;
  DeferredSteps& d = call.deferred;
  d.count = static_cast<int32_t>(count);
  d.clock_count = static_cast<int32_t>(clocks.size());
  d.group_count = group_count;
  d.applied = applied.data_ptr<int64_t>();
  d.words = words.data_ptr<double>();
  const int64_t* header = pending.data_ptr<int64_t>();
  d.first_sequence = header[0];
  for (size_t c = 0; c < clocks.size(); ++c) {
    const at::Tensor& clock = clocks[c];
    TORCH_CHECK(clock.scalar_type() == at::kLong && clock.numel() == 1 && clock.device() == words.device(), op,
                ": clocks[", c, "] must be a one-element int64 tensor on ", words.device());
    d.clocks[c] = clock.data_ptr<int64_t>();
  }
  for (int64_t i = 0; i < count; ++i) {
    const at::Tensor& r = rules[i];
    TORCH_CHECK(r.scalar_type() == at::kDouble && r.dim() == 1 && r.is_contiguous() && r.device() == words.device() &&
                    r.numel() > group_count,
                op, ": rules[", i, "] must be indexed rules (", group_count,
                " offsets, then the nodes) in a contiguous float64 tensor on ", words.device(), ", got ",
                r.scalar_type(), " of shape ", r.sizes(), " on ", r.device());
    TORCH_CHECK(words.numel() % kHeldWords == 0, op, ": deferred steps need words of HELD nodes");
    const int64_t slot = header[1 + i];
    TORCH_CHECK(slot >= 0 && slot < static_cast<int64_t>(clocks.size()), op, ": step ", i, " names clock ", slot,
                " of ", clocks.size());
    d.rules[i] = r.data_ptr<double>();
    d.clock_slot[i] = static_cast<int32_t>(slot);
    if (r.device().is_cpu()) {
      check_indexed_rules(r, group_count);
    }
  }
  gather_host_writes(words, header, pending.numel(), count, d, op);
}

void check_step_tensor(const StepCall& call, size_t i, const char* op) {
  const at::Tensor& p = *call.tensors.params[i];
  const auto check = [&](const at::Tensor& other, const char* what) {
    TORCH_CHECK(other.device() == p.device() && other.scalar_type() == p.scalar_type() && other.sizes() == p.sizes(),
                op, ": ", what, "[", i, "] is ", other.scalar_type(), " ", other.sizes(), " on ", other.device(),
                " but params[", i, "] is ", p.scalar_type(), " ", p.sizes(), " on ", p.device());
    TORCH_CHECK(!other.is_sparse(), op, ": sparse tensors are not supported (", what, "[", i, "])");
  };
  const auto dtype = p.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble, op,
              ": params must be float32, float16, bfloat16 or float64, got ", dtype, " for params[", i, "]");
  TORCH_CHECK(!p.is_sparse(), op, ": sparse tensors are not supported (params[", i, "])");
  TORCH_CHECK(call.words == nullptr || p.device() == call.words->device(), op, ": params[", i, "] is on ", p.device(),
              " but the words are on ", call.words->device());
  check(*call.tensors.grads[i], "grads");
  const BucketSpec& bucket = call.buckets[call.tensor_bucket[i]];
  const auto kind = static_cast<UpdateRuleKind>(bucket.rule);
  for (int k = 0; k < kMaxStates; ++k) {
    if (!rule_has_state(kind, bucket.flags, k)) continue;
    const char* list = state_list_name(kind, k);
    TORCH_CHECK(call.tensors.states[k][i] != nullptr, op, ": params[", i, "] has no entry in ", list, " (its bucket's ",
                kRuleNames[bucket.rule], " step needs one)");
    check(*call.tensors.states[k][i], list);
  }
  TORCH_CHECK(bucket.element_type == static_cast<int32_t>(element_type_of(dtype)), op, ": params[", i, "] has dtype ",
              dtype, " but its bucket's first param has another");
}

void check_schedule_program(const at::Tensor& schedule) {
  TORCH_CHECK(schedule.device().is_cpu(), "check_schedule_program needs a CPU tensor");
  const char* error = validate_schedule(schedule.data_ptr<double>(), schedule.numel());
  TORCH_CHECK(error == nullptr, "malformed schedule: ", error);
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
              "advance_lr_: groups, clock and rules must be on one device, got ", groups.device(), ", ", clock.device(),
              " and ", rules.device());
  return groups.numel() / kHeldWords;
}

void check_rules(const at::Tensor& rules, int64_t group_count) {
  TORCH_CHECK(rules.device().is_cpu(), "check_rules needs a CPU tensor");
  const char* error = validate_rules(rules.data_ptr<double>(), rules.numel(), group_count);
  TORCH_CHECK(error == nullptr, "advance_lr_: malformed rules: ", error);
}

void check_indexed_rules(const at::Tensor& rules, int64_t group_count) {
  TORCH_CHECK(rules.device().is_cpu(), "check_indexed_rules needs a CPU tensor");
  const double* r = rules.data_ptr<double>();
  const int64_t nodes = rules.numel() - group_count;
  int64_t offset = 0;
  for (int64_t g = 0; g < group_count; ++g) {
    TORCH_CHECK(r[g] == static_cast<double>(offset) && offset + 1 < nodes, "adam_step_: indexed rules: group ", g,
                "'s offset is ", r[g], ", expected ", offset);
    offset += static_cast<int64_t>(r[group_count + offset + 1]);
  }
  const char* error = validate_rules(r + group_count, nodes, group_count);
  TORCH_CHECK(error == nullptr, "adam_step_: malformed rules: ", error);
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

// The step's encoding as this library compiles it, by name ("name=value", space-separated): the
// bucket row's words, the bucket flags, the deferred-step limit, the HELD node's words, the rule
// kinds and the element types. lrfused/_step_plan.py and lrfused/_rules.py write the same numbers
// for the host; tests/test_encoding.py compares the two by name.
std::string step_encoding_op() {
  const std::pair<const char*, int64_t> entries[] = {
      {"bucket.tensor_begin", kBucketTensorBegin},
      {"bucket.tensor_end", kBucketTensorEnd},
      {"bucket.state_begin", kBucketStateBegin},
      {"bucket.program", kBucketProgram},
      {"bucket.group", kBucketGroup},
      {"bucket.rule", kBucketRule},
      {"bucket.momentum", kBucketMomentum},
      {"bucket.decay", kBucketDecay},
      {"bucket.eps", kBucketEps},
      {"bucket.weight_decay", kBucketWeightDecay},
      {"bucket.flags", kBucketFlags},
      {"bucket.words", kBucketWords},
      {"max_states", kMaxStates},
      {"flag.amsgrad", kFlagAmsgrad},
      {"flag.decoupled", kFlagDecoupled},
      {"flag.maximize", kFlagMaximize},
      {"flag.momentum", kFlagMomentum},
      {"flag.nesterov", kFlagNesterov},
      {"flag.centered", kFlagCentered},
      {"update.adam", static_cast<int64_t>(UpdateRuleKind::kAdam)},
      {"update.sgd", static_cast<int64_t>(UpdateRuleKind::kSgd)},
      {"update.rmsprop", static_cast<int64_t>(UpdateRuleKind::kRmsprop)},
      {"update.adagrad", static_cast<int64_t>(UpdateRuleKind::kAdagrad)},
      {"max_deferred_steps", kMaxDeferredSteps},
      {"max_host_writes", kMaxHostWrites},
      {"pending.write_count", kPendingWriteCount},
      {"pending.write_sequence", kPendingWriteSequence},
      {"pending.writes", kPendingWrites},
      {"pending.words", kPendingWords},
      {"held.words", kHeldWords},
      {"held.lr", kHeldLr},
      {"held.beta1", kHeldBeta1},
      {"rule.keep", kRuleKeep},
      {"rule.set", kRuleSet},
      {"rule.chain", kRuleChain},
      {"rule.sequential", kRuleSequential},
      {"rule.count", kNumStepRules},
      {"element.float32", static_cast<int64_t>(ElementType::kFloat32)},
      {"element.float16", static_cast<int64_t>(ElementType::kFloat16)},
      {"element.bfloat16", static_cast<int64_t>(ElementType::kBFloat16)},
      {"element.float64", static_cast<int64_t>(ElementType::kFloat64)},
  };
  std::string text;
  for (const auto& [name, value] : entries) {
    if (!text.empty()) text += ' ';
    text += std::string(name) + "=" + std::to_string(value);
  }
  return text;
}

}  // namespace

TORCH_LIBRARY(lrfused, m) {
  // note [One op per step] (common/step_plan.h): every group and dtype of one device, and the
  // scheduler steps deferred to it, in one call. `buckets` holds kBucketWords words per bucket.
  m.def(
      "adam_step_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs, "
      "Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] steps, Tensor buckets, Tensor(g!) words, Tensor(h!)[] clocks, "
      "Tensor[] rules, Tensor(i!) applied, Tensor pending, *, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "Tensor(j!)? invalid_steps=None, Tensor? handle=None) -> ()");
  // The same call for the other update rules (note [The seam of an update rule] in csrc/README.md):
  // each names its rule's state lists; a list holds the tensors of the buckets that have the state.
  m.def(
      "sgd_step_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, Tensor(f!)[] steps, "
      "Tensor buckets, Tensor(g!) words, Tensor(h!)[] clocks, Tensor[] rules, Tensor(i!) applied, Tensor pending, *, "
      "Tensor? grad_scale=None, Tensor? found_inf=None, Tensor(j!)? invalid_steps=None, Tensor? handle=None) -> ()");
  m.def(
      "rmsprop_step_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] square_avgs, "
      "Tensor(d!)[] momentum_buffers, Tensor(e!)[] grad_avgs, Tensor(f!)[] steps, Tensor buckets, Tensor(g!) words, "
      "Tensor(h!)[] clocks, Tensor[] rules, Tensor(i!) applied, Tensor pending, *, Tensor? grad_scale=None, "
      "Tensor? found_inf=None, Tensor(j!)? invalid_steps=None, Tensor? handle=None) -> ()");
  m.def(
      "adagrad_step_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] state_sums, Tensor(f!)[] steps, "
      "Tensor buckets, Tensor(g!) words, Tensor(h!)[] clocks, Tensor[] rules, Tensor(i!) applied, Tensor pending, *, "
      "Tensor? grad_scale=None, Tensor? found_inf=None, Tensor(j!)? invalid_steps=None, Tensor? handle=None) -> ()");
  // The same step from the tensors a table holds (note [Step tables] in step_table.h): the grads
  // are read from the params in C++. Returns False, having changed nothing, when the grads no
  // longer match the table; the caller then makes a new table. Beyond the arguments marked (x!)
  // it writes, through `table`, the tensors set_step_table gave it: the params, the rule's states,
  // and (with grad_scale) the grads it reads from the sources.
  // The schema cannot say so; the eager step is its only caller, and a compiled step takes
  // adam_step_, whose schema names every tensor it writes.
  m.def(
      "table_step_(Tensor table, Tensor buckets, Tensor(a!)[] steps, Tensor(b!) words, Tensor(c!)[] clocks, "
      "Tensor[] rules, Tensor(d!) applied, Tensor pending, *, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "Tensor(e!)? invalid_steps=None) -> bool");
  m.def(
      "set_step_table(Tensor table, Tensor[] sources, Tensor[] params, Tensor[] states0, Tensor[] states1, "
      "Tensor[] states2, Tensor[] watched) -> ()");
  // A bucket's handle (note [Bucket handles] in handle.h).
  // Tagged so that no compiler pass may merge two calls (each bucket needs a handle of its own);
  // torch 2.13's aot_eager and inductor keep them apart even without the tag.
  m.def("new_handle() -> Tensor", {at::Tag::nondeterministic_seeded});
  m.impl("new_handle", c10::DispatchKey::CompositeExplicitAutograd, &new_handle);
  m.def("evaluate_schedule(Tensor schedule, int t) -> float[]");
  m.impl("evaluate_schedule", c10::DispatchKey::CompositeExplicitAutograd, &evaluate_schedule_op);
  m.def("schedule_encoding() -> int[]");
  m.impl("schedule_encoding", c10::DispatchKey::CompositeExplicitAutograd, &schedule_encoding_op);
  m.def("step_encoding() -> str");
  m.impl("step_encoding", c10::DispatchKey::CompositeExplicitAutograd, &step_encoding_op);
  // One scheduler step on the device (note [Scheduler steps on the device] in common/lr_step.h):
  // the clock moves to clock + 1 (or to `epoch`) and each group's HELD words follow its rule.
  m.def("advance_lr_(Tensor(a!) groups, Tensor(b!) clock, Tensor rules, int? epoch=None) -> ()");
  m.def("validate_rules(Tensor rules, int group_count) -> ()");
  m.impl("validate_rules", c10::DispatchKey::CompositeExplicitAutograd, &validate_rules_op);
}

}  // namespace lrfused
