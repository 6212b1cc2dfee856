// What one call of the step op reads besides the tensors: the buckets (one per step counter) with
// their hyperparameters and programs, and the scheduler steps deferred to this call.
//
// note [One op per step]
// An optimizer step and the scheduler steps around it are one call of lrfused::adam_step_ (one
// launch on CUDA) per device, whatever the number of param groups and dtypes:
//
// * Buckets. The params that share a step counter (one group, one dtype) form a bucket; each
//   bucket carries its group's hyperparameters, its flags and where its program is in the
//   binding's words (a HELD node, or the `lr * schedule(step)` product of `schedule=`). A tensor
//   names its bucket, so one call walks every group and dtype.
// * Deferred scheduler steps. A torch-compatible scheduler's `step()` computes torch's values on
//   the host for `get_last_lr()` and `group["lr"]`, and leaves its device step (a rules array and
//   its clock, note [Scheduler steps on the device]) to the next optimizer step, which applies it
//   before computing the lrs: torch's order, since a scheduler step comes after the optimizer step
//   it follows and before the next. Each deferred step has a sequence number; the device counter
//   `applied` says how many were applied, and a step whose number is below it is skipped. So a
//   CUDA graph that captured a call carrying deferred steps applies them at its first replay only,
//   and an eager call never applies one twice. Whatever must see the device lrs before the next
//   optimizer step (a host write a scheduler's step starts from, ReduceLROnPlateau, a captured
//   scheduler step, a step to an explicit epoch) first flushes the deferred steps with a call that
//   has no tensors.
// * Every block (every CPU call) computes the lr of a bucket from the words as they were before
//   the call plus the deferred steps, in registers; the one writer at the end (the last CUDA
//   block, the CPU call after its loop) advances the step counters, writes the new HELD words and
//   moves the clocks. An AMP-skipped step (found_inf) still applies the deferred scheduler steps,
//   as torch's scheduler steps do not depend on the optimizer's.
// * Host writes. An lr (or a beta1) the host wrote into a param group since the last call (a
//   stock torch scheduler, a framework, a hand write), noticed by the optimizer's step just before
//   its call, rides in the same call (note [Host writes]) instead of a launch of its own.
#pragma once

#include <cstdint>

#include "adam_math.h"
#include "host_device.h"
#include "lr_schedule.h"
#include "lr_step.h"
#include "step_scalars.h"
#include "update_rules.h"

namespace lrfused {

// Element types, as every backend names them without including torch.
enum class ElementType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// Deferred scheduler steps one call carries at most; more are flushed first.
constexpr int kMaxDeferredSteps = 8;

// note [Host writes]
// Words the host wrote since the last call, carried by the call in the `pending` header (a CPU
// int64 tensor the op reads on the host; a CUDA launch takes them by value): after the deferred
// steps' slots, the number of writes, their sequence number (one for the whole batch, issued
// after every deferred step the call carries, so they land last: the last writer wins), then per
// write its position in the words and its float64 value's bits. Like a deferred step, the batch
// lands once: a replayed graph whose call carried it skips it. A header shorter than
// kPendingWrites carries none (a call without deferred work). More writes than kMaxHostWrites
// are written by the host at once instead.
constexpr int kMaxHostWrites = 32;
enum PendingWord : int {
  kPendingFirstSequence = 0,  // the first deferred step's sequence number
  kPendingSlots = 1,          // then each deferred step's clock slot
  kPendingWriteCount = 1 + kMaxDeferredSteps,
  kPendingWriteSequence = 2 + kMaxDeferredSteps,
  kPendingWrites = 3 + kMaxDeferredSteps,  // then (position, value bits) per write
  kPendingWords = kPendingWrites + 2 * kMaxHostWrites,
};

// The words of one bucket in the op's `buckets` argument (a CPU float64 tensor, one row per bucket).
// The four hyperparameter words are read by the bucket's rule:
//
//   | rule    | momentum | decay     | eps | weight_decay |
//   | Adam    | beta1    | beta2     | eps | weight_decay |
//   | SGD     | momentum | dampening | 0   | weight_decay |
//   | RMSprop | momentum | alpha     | eps | weight_decay |
//   | Adagrad | 0        | lr_decay  | eps | weight_decay |
//
// The momentum word is the one a cycling schedule drives (the HELD node's beta1 word).
enum BucketWord : int {
  kBucketTensorBegin = 0,  // the bucket's tensors are [begin, end) of the params
  kBucketTensorEnd = 1,
  // Where the bucket's tensors begin in each state list: a list holds the tensors of the buckets
  // that have that state (update_rules.h's rule_has_state), in order.
  kBucketStateBegin = 2,  // kMaxStates words
  kBucketProgram = 5,     // offset of its program in the words
  kBucketGroup = 6,       // its HELD node's group index (deferred steps apply), or -1
  kBucketRule = 7,        // its UpdateRuleKind
  kBucketMomentum = 8,
  kBucketDecay = 9,
  kBucketEps = 10,
  kBucketWeightDecay = 11,
  kBucketFlags = 12,
  kBucketWords = 13,
};

struct BucketSpec {
  int64_t* step;          // the bucket's step counter
  const double* program;  // its program: a HELD node or a schedule
  int64_t group;          // >= 0: the program is group `group`'s HELD node, moved by deferred steps
  double momentum;        // the row's words (see BucketWord)
  double decay;
  double eps;
  double weight_decay;
  int32_t rule;  // UpdateRuleKind
  int32_t flags;
  int32_t element_type;
};

// The most state tensors an update rule keeps per param (Adam: exp_avg, exp_avg_sq and, with
// AMSGrad, max_exp_avg_sq; RMSprop: square_avg, momentum_buffer, grad_avg). A tensor without one
// of its rule's states (update_rules.h's rule_has_state) holds null there.
constexpr int kMaxStates = 3;

// The pointers the kernels read for one tensor of a call (also the CUDA table's entry). Nothing
// here is a rule's own: the states are the rule's in its order (note [The seam of an update rule]
// in csrc/README.md), named by the rule's math header (adam_math.h's AdamState).
struct TensorEntry {
  void* param;
  void* grad;
  void* state[kMaxStates];  // null: a state this tensor does not have
  int64_t numel;
  int32_t aligned;  // CUDA: every pointer aligned to a pack (kPackElements elements), the vector path applies
  int32_t bucket;   // its BucketSpec
};

struct DeferredSteps {
  int32_t count;
  int32_t clock_count;
  int64_t first_sequence;  // the sequence number of step 0
  int64_t group_count;     // groups in the words (each rules array has one node per group)
  int64_t* applied;        // deferred steps applied so far (device counter)
  double* words;           // the HELD words, kHeldWords per group
  // Per step: its indexed rules ([offset of group g's node, for each g | the nodes]) and its clock.
  const double* rules[kMaxDeferredSteps];
  int32_t clock_slot[kMaxDeferredSteps];
  int64_t* clocks[kMaxDeferredSteps];
  // note [Host writes]: after the steps, each group's word `write_word[w]` (kHeldLr or
  // kHeldBeta1) of group `write_group[w]` becomes `write_value[w]`.
  int32_t write_count;
  int64_t write_sequence;
  int32_t write_group[kMaxHostWrites];
  int32_t write_word[kMaxHostWrites];
  double write_value[kMaxHostWrites];
};

// Whether the call moves the HELD words (its writer's part writes them).
LRFUSED_HOST_DEVICE bool moves_words(const DeferredSteps& d) { return d.count > 0 || d.write_count > 0; }

// Group `group`'s (lr, beta1) after the deferred steps and the host writes, from the words as
// they are before the call.
LRFUSED_HOST_DEVICE HeldValue held_after(const DeferredSteps& d, int64_t group) {
  const double* node = d.words + group * kHeldWords;
  HeldValue held{node[kHeldLr], node[kHeldBeta1]};
  if (!moves_words(d)) return held;
  int64_t applied = *d.applied;
  if (d.count > 0) {
    int64_t clocks[kMaxDeferredSteps];
    for (int c = 0; c < d.clock_count; ++c) clocks[c] = *d.clocks[c];
    for (int i = 0; i < d.count; ++i) {
      const int64_t sequence = d.first_sequence + i;
      if (applied > sequence) continue;  // applied by an earlier call (a replayed graph)
      const double* rules = d.rules[i];
      const double* rule = rules + d.group_count + static_cast<int64_t>(rules[group]);
      const int64_t t = ++clocks[d.clock_slot[i]];
      held = apply_rule(rule, t, /*explicit_epoch=*/false, held);
      applied = sequence + 1;
    }
  }
  if (d.write_count > 0 && applied <= d.write_sequence) {
    for (int w = 0; w < d.write_count; ++w) {
      if (d.write_group[w] != group) continue;
      if (d.write_word[w] == kHeldLr) {
        held.lr = d.write_value[w];
      } else {
        held.beta1 = d.write_value[w];
      }
    }
  }
  return held;
}

// The writer's part for the clocks and the `applied` counter, after every group's words were
// written (held_after read the old ones).
LRFUSED_HOST_DEVICE void commit_clocks(const DeferredSteps& d) {
  if (!moves_words(d)) return;
  int64_t applied = *d.applied;
  if (d.count > 0) {
    int64_t clocks[kMaxDeferredSteps];
    for (int c = 0; c < d.clock_count; ++c) clocks[c] = *d.clocks[c];
    for (int i = 0; i < d.count; ++i) {
      const int64_t sequence = d.first_sequence + i;
      if (applied > sequence) continue;
      ++clocks[d.clock_slot[i]];
      applied = sequence + 1;
    }
    for (int c = 0; c < d.clock_count; ++c) *d.clocks[c] = clocks[c];
  }
  if (d.write_count > 0 && applied <= d.write_sequence) applied = d.write_sequence + 1;
  *d.applied = applied;
}

// The scalars of a bucket for this call (note [Unusable schedule values] decides `usable`).
LRFUSED_HOST_DEVICE StepScalars bucket_scalars(const BucketSpec& b, const DeferredSteps& d) {
  const int64_t step = *b.step;
  ScheduleValue value;
  if (b.group >= 0) {
    const HeldValue held = held_after(d, b.group);
    value = {held.lr, held.beta1};
  } else {
    value = evaluate_schedule(b.program, step);
  }
  return rule_scalars(static_cast<UpdateRuleKind>(b.rule), value, b.momentum, b.decay, b.eps, b.weight_decay, step);
}

}  // namespace lrfused
