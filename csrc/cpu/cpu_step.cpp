// The step on the CPU, of every update rule (note [One op per step] in common/step_plan.h): the scalars of every
// bucket, one parallel loop over every tensor of every bucket, then the one writer's part.
//
// note [One parallel region per call]
// torch's fused CPU Adam opens one at::parallel_for per tensor, so a model of many small tensors
// pays the thread-pool hand-off thousands of times per step. Here all the tensors of a call, of
// every group and dtype, are laid end to end in one index space and a single parallel_for splits
// that space; each worker finds its first tensor by binary search over the prefix sums of the
// sizes, and each tensor is updated by the function of its dtype and flags.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "../common/step_plan.h"
#include "../ops.h"
#include "cpu_segment.h"

namespace lrfused {

namespace {

// note [CPU instruction sets]
// The update loops (adam_update_loop.h, rule_update_loop.h) are compiled twice: for any x86-64/ARM CPU, and with AVX2
// and FMA enabled (update_avx2.cpp), as ATen compiles its own CPU kernels once per
// capability. The AVX2 build is chosen at run time when the CPU has AVX2 and FMA, so a wheel
// runs everywhere and is as fast as torch's kernels where it can be. -ffp-contract=off keeps
// both variants to the same roundings (no fused multiply-adds), those of torch's Adam.
RangeUpdate range_update(ElementType type, int32_t rule, int32_t flags) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (has_avx2) return cpu_avx2::range_update(type, rule, flags);
#endif
  return cpu_default::range_update(type, rule, flags);
}

// Elements per task of the parallel loop: ATen's grain size (at::internal::GRAIN_SIZE).
constexpr int64_t kGrainSize = 32768;

void update_all(const std::vector<CpuSegment>& segments, const std::vector<int64_t>& offsets) {
  const int64_t total = offsets.back();
  if (total == 0) return;
  at::parallel_for(0, total, kGrainSize, [&](int64_t begin, int64_t end) {
    // offsets[k] is where segment k starts; find the last segment starting at or before `begin`.
    size_t k = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
    int64_t position = begin;
    while (position < end) {
      const int64_t segment_end = std::min(end, offsets[k + 1]);
      const CpuSegment& segment = segments[k];
      segment.update(segment, position - offsets[k], segment_end - offsets[k]);
      position = segment_end;
      ++k;
    }
  });
}

// Scratch reused by the calls of one thread: a training loop's step allocates nothing.
struct Scratch {
  std::vector<StepConfig> configs;
  std::vector<RangeUpdate> updates;
  std::vector<char> usable;
  std::vector<CpuSegment> segments;
  std::vector<int64_t> offsets;
};

}  // namespace

void run_step_cpu(StepCall& call) {
  thread_local Scratch scratch;
  const size_t bucket_count = call.buckets.size();
  const bool skipped = call.found_inf != nullptr && call.found_inf->item<float>() != 0.0f;
  const float* grad_scale = call.grad_scale != nullptr ? call.grad_scale->data_ptr<float>() : nullptr;
  const DeferredSteps& deferred = call.deferred;

  scratch.configs.resize(bucket_count);
  scratch.updates.resize(bucket_count);
  scratch.usable.assign(bucket_count, 0);
  if (!skipped) {
    for (size_t b = 0; b < bucket_count; ++b) {
      const BucketSpec& bucket = call.buckets[b];
      const StepScalars s = bucket_scalars(bucket, deferred);
      scratch.usable[b] = s.usable;
      StepConfig& config = scratch.configs[b];
      switch (static_cast<UpdateRuleKind>(bucket.rule)) {
        case UpdateRuleKind::kAdam: config.adam.set(s.scalars); break;
        case UpdateRuleKind::kSgd: config.sgd.set(s.sgd); break;
        case UpdateRuleKind::kRmsprop: config.rmsprop.set(s.rmsprop); break;
        case UpdateRuleKind::kAdagrad: config.adagrad.set(s.adagrad); break;
      }
      config.maximize = (bucket.flags & kFlagMaximize) != 0;
      config.has_weight_decay = bucket.weight_decay != 0.0;
      config.first_step = s.first_step;
      config.grad_scale = grad_scale;
      scratch.updates[b] = range_update(static_cast<ElementType>(bucket.element_type), bucket.rule, bucket.flags);
    }
  }

  if (!skipped) {
    std::unique_ptr<WorkingLayout> layout;
    const std::vector<TensorEntry>& raw = raw_tensors(call, layout);
    scratch.segments.clear();
    scratch.offsets.assign(1, 0);
    for (const TensorEntry& t : raw) {
      if (!scratch.usable[t.bucket] || t.numel == 0) continue;
      scratch.segments.push_back({t.param,
                                  t.grad,
                                  {t.state[0], t.state[1], t.state[2]},
                                  scratch.updates[t.bucket],
                                  &scratch.configs[t.bucket]});
      scratch.offsets.push_back(scratch.offsets.back() + t.numel);
    }
    update_all(scratch.segments, scratch.offsets);
    if (layout) layout->write_back();
  }

  // The writer's part. A skipped step (AMP overflow) changes no counter; an unusable schedule value
  // skips its bucket and is counted (note [Unusable schedule values]).
  for (size_t b = 0; b < bucket_count && !skipped; ++b) {
    if (scratch.usable[b]) {
      *call.buckets[b].step += 1;
    } else if (call.invalid_steps != nullptr) {
      call.invalid_steps->add_(1);
    }
  }
  // The deferred scheduler steps apply whether or not the optimizer's step was skipped.
  if (moves_words(deferred)) {
    for (int64_t g = 0; g < deferred.group_count; ++g) {
      const HeldValue held = held_after(deferred, g);
      double* node = deferred.words + g * kHeldWords;
      node[kHeldLr] = held.lr;
      node[kHeldBeta1] = held.beta1;
    }
    commit_clocks(deferred);
  }
}

}  // namespace lrfused
