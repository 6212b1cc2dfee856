// One step of a torch-compatible scheduler, applied on the device to the lr a param group holds.
//
// note [Scheduler steps on the device]
// torch's schedulers compose through the optimizer: each `scheduler.step()` computes the new lr
// from the *current* `group["lr"]` (the chainable form), or sets it from a closed form. So several
// schedulers on one optimizer, a hand write between steps, a plateau scheduler stepped per epoch
// under a warm-up stepped per iteration, all compose as a sequence of updates of one value. lrfused
// keeps that value on the device (the HELD node of each group, lr_schedule.h) and applies each
// scheduler step to it there, from the scheduler's own device clock: no host sync, and a captured
// `scheduler.step()` replays correctly. The host runs torch's own code on the Python floats for
// `group["lr"]` and `get_last_lr()`; both sides follow the same formulas in float64.
//
// A scheduler's rules are a flat float64 array holding one rule node per param group:
//
//     [rule, length, ...]
//
//   KEEP        []                       the group is left as it is (a group the scheduler does not know)
//   SET         [schedule node]          lr = f(t) (and beta1 when f cycles it): LambdaLR, CyclicLR, ...
//   CHAIN       [schedule node]          lr = torch's chainable step at t from the current lr: StepLR, ...
//   SEQUENTIAL  [count, m_1 .. m_{count-1}] + count KEEP/SET/CHAIN nodes: SequentialLR
//
// An explicit epoch (`scheduler.step(epoch)`) uses the closed form where torch does.
#pragma once

#include <math.h>
#include <cstdint>

#include "host_device.h"
#include "lr_schedule.h"

namespace lrfused {

enum StepRule : int {
  kRuleKeep = 0,
  kRuleSet = 1,
  kRuleChain = 2,
  kRuleSequential = 3,
  kNumStepRules = 4,
};

// A HELD node per param group: [kHeld, 4, lr, beta1].
constexpr int64_t kHeldWords = 4;
constexpr int64_t kHeldLr = 2;
constexpr int64_t kHeldBeta1 = 3;

struct HeldValue {
  double lr;
  double beta1;
};

// torch's chainable `get_lr` for the node kinds its chainable schedulers encode to, written as
// torch writes it so that the float64 rounding is the same. Other kinds set their closed form.
LRFUSED_HOST_DEVICE double chain_step(const double* node, int64_t t, double lr) {
  const int kind = static_cast<int>(node[0]);
  const double* p = node + 2;
  const double td = static_cast<double>(t);
  switch (kind) {
    case kStep: {  // [init, step_size, gamma]
      const int64_t size = static_cast<int64_t>(p[1]);
      return (t == 0 || t % size != 0) ? lr : lr * p[2];
    }
    case kMultiStep: {  // [init, gamma, count, milestones...]: gamma ** (times t is a milestone)
      const int64_t count = static_cast<int64_t>(p[2]);
      int64_t hits = 0;
      for (int64_t i = 0; i < count; ++i) {
        hits += static_cast<int64_t>(p[3 + i]) == t ? 1 : 0;
      }
      return hits == 0 ? lr : lr * ::pow(p[1], static_cast<double>(hits));
    }
    case kConstantFactor:  // [init, factor, total_iters]
      if (t == 0) return lr * p[1];
      return td != p[2] ? lr : lr * (1.0 / p[1]);
    case kLinear: {  // [init, start, end, total_iters]
      if (t == 0) return lr * p[1];
      if (td > p[3]) return lr;
      return lr * (1.0 + (p[2] - p[1]) / (p[3] * p[1] + (td - 1.0) * (p[2] - p[1])));
    }
    case kExponential:  // [init, gamma]
      return t == 0 ? lr : lr * p[1];
    case kPolynomial: {  // [init, end, total_iters, power]
      if (t == 0 || td > p[2]) return lr;
      return lr * ::pow((1.0 - td / p[2]) / (1.0 - (td - 1.0) / p[2]), p[3]);
    }
    case kCosine: {  // [init, floor, period, clamp]
      const double period = p[2];
      if (t == 0) return lr;
      const int64_t period_steps = static_cast<int64_t>(period);
      if ((t - 1 - period_steps) % (2 * period_steps) == 0) {
        return lr + (p[0] - p[1]) * (1.0 - ::cos(kPi / period)) / 2.0;
      }
      return (1.0 + ::cos(kPi * td / period)) / (1.0 + ::cos(kPi * (td - 1.0) / period)) * (lr - p[1]) + p[1];
    }
    case kTable:  // MultiplicativeLR: the table holds lr_lambda(t)
      return t > 0 ? lr * detail::table_value(p, t) : lr;
    default: return evaluate_schedule(node, t).lr;
  }
}

// One KEEP, SET or CHAIN node applied at t.
LRFUSED_HOST_DEVICE HeldValue apply_leaf_rule(const double* rule, int64_t t, bool explicit_epoch, HeldValue held) {
  const int kind = static_cast<int>(rule[0]);
  const double* node = rule + 2;
  if (kind == kRuleSet) {
    const ScheduleValue v = evaluate_schedule(node, t);
    return {v.lr, schedule_is_nan(v.beta1) ? held.beta1 : v.beta1};
  }
  if (kind == kRuleChain) {
    // torch's step(epoch) uses the closed form where a class has one; MultiplicativeLR has none.
    const bool closed_form = explicit_epoch && static_cast<int>(node[0]) != kTable;
    return {closed_form ? evaluate_schedule(node, t).lr : chain_step(node, t, held.lr), held.beta1};
  }
  return held;
}

// One rule node (any kind) applied at the scheduler's new clock t.
LRFUSED_HOST_DEVICE HeldValue apply_rule(const double* rule, int64_t t, bool explicit_epoch, HeldValue held) {
  if (static_cast<int>(rule[0]) != kRuleSequential) {
    return apply_leaf_rule(rule, t, explicit_epoch, held);
  }
  // SequentialLR: child i = the number of milestones <= t, stepped at t - m_i; at its milestone
  // torch calls the child's `_update_lr(0)`, the closed form at 0.
  const double* p = rule + 2;
  const int64_t count = static_cast<int64_t>(p[0]);
  const double* child = p + count;
  int64_t start = 0;
  for (int64_t i = 0; i + 1 < count && static_cast<int64_t>(p[1 + i]) <= t; ++i) {
    start = static_cast<int64_t>(p[1 + i]);
    child += static_cast<int64_t>(child[1]);
  }
  const bool at_milestone = child != p + count && t == start;
  return apply_leaf_rule(child, t - start, explicit_epoch || at_milestone, held);
}

// Applies one rule node per group to the HELD words `groups` (kHeldWords per group).
LRFUSED_HOST_DEVICE void apply_rules(const double* rules, int64_t group_count, double* groups, int64_t t,
                                     bool explicit_epoch) {
  const double* rule = rules;
  for (int64_t g = 0; g < group_count; ++g) {
    double* words = groups + g * kHeldWords;
    const HeldValue next = apply_rule(rule, t, explicit_epoch, HeldValue{words[kHeldLr], words[kHeldBeta1]});
    words[kHeldLr] = next.lr;
    words[kHeldBeta1] = next.beta1;
    rule += static_cast<int64_t>(rule[1]);
  }
}

// Checks a rules array for `group_count` groups: known rule kinds, lengths that add up, valid
// schedule nodes, no nesting beyond one SEQUENTIAL level. nullptr when valid, else a message.
inline const char* validate_leaf_rule(const double* rule, int64_t available) {
  if (available < 2) return "rule node is truncated";
  const double kind = rule[0], length = rule[1];
  if (!(kind == kRuleKeep || kind == kRuleSet || kind == kRuleChain)) return "rule node has an unknown kind";
  if (!(length >= 2 && length <= static_cast<double>(available)) || length != ::floor(length)) {
    return "rule node length is out of bounds";
  }
  const int64_t words = static_cast<int64_t>(length) - 2;
  if (kind == kRuleKeep) return words == 0 ? nullptr : "KEEP rule has words";
  if (words < 2 || rule[3] != static_cast<double>(words)) return "rule node length does not match its schedule";
  return validate_schedule(rule + 2, words);
}

inline const char* validate_rules(const double* rules, int64_t length, int64_t group_count) {
  int64_t offset = 0;
  for (int64_t g = 0; g < group_count; ++g) {
    const double* rule = rules + offset;
    const int64_t available = length - offset;
    if (available < 2) return "rules are shorter than one node per param group";
    if (rule[0] == kRuleSequential) {
      if (!(rule[1] >= 3 && rule[1] <= static_cast<double>(available)) || rule[1] != ::floor(rule[1])) {
        return "SEQUENTIAL rule length is out of bounds";
      }
      const int64_t size = static_cast<int64_t>(rule[1]);
      const double count_word = rule[2];
      if (!(count_word >= 1 && count_word <= static_cast<double>(size - 2)) || count_word != ::floor(count_word)) {
        return "SEQUENTIAL rule has a bad child count";
      }
      const int64_t count = static_cast<int64_t>(count_word);
      int64_t inner = 2 + count;  // header, count, milestones
      for (int64_t i = 0; i < count; ++i) {
        if (inner >= size) return "SEQUENTIAL rule is shorter than its children";
        const char* error = validate_leaf_rule(rule + inner, size - inner);
        if (error != nullptr) return error;
        inner += static_cast<int64_t>(rule[inner + 1]);
      }
      if (inner != size) return "SEQUENTIAL rule length does not match its children";
      offset += size;
    } else {
      const char* error = validate_leaf_rule(rule, available);
      if (error != nullptr) return error;
      offset += static_cast<int64_t>(rule[1]);
    }
  }
  return offset == length ? nullptr : "rules have words after the last param group's node";
}

}  // namespace lrfused
