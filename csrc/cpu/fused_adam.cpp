// lrfused::fused_adam_ on the CPU.
//
// note [One parallel region per call]
// torch's fused CPU Adam opens one at::parallel_for per tensor, so a model of many small tensors
// pays the thread-pool hand-off thousands of times per step. Here all the tensors of a call are
// laid end to end in one index space and a single parallel_for splits that space; each worker
// finds its first tensor by binary search over the prefix sums of the sizes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/adam_math.h"
#include "../common/lr_schedule.h"
#include "../ops.h"

namespace lrfused {

template <>
struct OpMath<at::vec::Vectorized<float>> {
  using Vec = at::vec::Vectorized<float>;
  static Vec sqrt(const Vec& x) { return x.sqrt(); }
  static Vec max(const Vec& a, const Vec& b) { return at::vec::maximum(a, b); }
};

namespace {

using FloatVec = at::vec::Vectorized<float>;

template <typename scalar_t>
struct Segment {
  scalar_t* param;
  scalar_t* grad;
  scalar_t* exp_avg;
  scalar_t* exp_avg_sq;
  scalar_t* max_exp_avg_sq;  // null without AMSGrad
};

struct StepConfig {
  AdamScalars scalars;
  bool maximize;
  bool has_weight_decay;
  const float* grad_scale;  // null without AMP
};

// Elements [begin, end) of one tensor: full float vectors first, then a scalar tail.
template <typename scalar_t, bool kAmsgrad, bool kDecoupled>
void update_range(const Segment<scalar_t>& s, int64_t begin, int64_t end, const StepConfig& c) {
  const bool unscale = c.grad_scale != nullptr;
  const float scale = unscale ? *c.grad_scale : 1.0f;
  int64_t i = begin;
  if constexpr (std::is_same_v<scalar_t, float>) {
    for (; i + FloatVec::size() <= end; i += FloatVec::size()) {
      FloatVec p = FloatVec::loadu(s.param + i);
      FloatVec g = FloatVec::loadu(s.grad + i);
      FloatVec m = FloatVec::loadu(s.exp_avg + i);
      FloatVec v = FloatVec::loadu(s.exp_avg_sq + i);
      FloatVec vmax = kAmsgrad ? FloatVec::loadu(s.max_exp_avg_sq + i) : FloatVec(0.0f);
      if (unscale) {
        g = g / FloatVec(scale);
        g.store(s.grad + i);
      }
      adam_update<FloatVec, kAmsgrad, kDecoupled>(p, g, m, v, vmax, c.scalars, c.maximize, c.has_weight_decay);
      p.store(s.param + i);
      m.store(s.exp_avg + i);
      v.store(s.exp_avg_sq + i);
      if (kAmsgrad) vmax.store(s.max_exp_avg_sq + i);
    }
  } else {
    // Reduced precision: each vector of scalar_t widens to two float vectors (fp32 opmath).
    using Vec = at::vec::Vectorized<scalar_t>;
    for (; i + Vec::size() <= end; i += Vec::size()) {
      auto [p0, p1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(s.param + i));
      auto [g0, g1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(s.grad + i));
      auto [m0, m1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(s.exp_avg + i));
      auto [v0, v1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(s.exp_avg_sq + i));
      FloatVec x0(0.0f), x1(0.0f);
      if (kAmsgrad) std::tie(x0, x1) = at::vec::convert_to_float<scalar_t>(Vec::loadu(s.max_exp_avg_sq + i));
      if (unscale) {
        g0 = g0 / FloatVec(scale);
        g1 = g1 / FloatVec(scale);
        at::vec::convert_from_float<scalar_t>(g0, g1).store(s.grad + i);
      }
      adam_update<FloatVec, kAmsgrad, kDecoupled>(p0, g0, m0, v0, x0, c.scalars, c.maximize, c.has_weight_decay);
      adam_update<FloatVec, kAmsgrad, kDecoupled>(p1, g1, m1, v1, x1, c.scalars, c.maximize, c.has_weight_decay);
      at::vec::convert_from_float<scalar_t>(p0, p1).store(s.param + i);
      at::vec::convert_from_float<scalar_t>(m0, m1).store(s.exp_avg + i);
      at::vec::convert_from_float<scalar_t>(v0, v1).store(s.exp_avg_sq + i);
      if (kAmsgrad) at::vec::convert_from_float<scalar_t>(x0, x1).store(s.max_exp_avg_sq + i);
    }
  }
  for (; i < end; ++i) {
    float p = static_cast<float>(s.param[i]);
    float g = static_cast<float>(s.grad[i]);
    float m = static_cast<float>(s.exp_avg[i]);
    float v = static_cast<float>(s.exp_avg_sq[i]);
    float vmax = kAmsgrad ? static_cast<float>(s.max_exp_avg_sq[i]) : 0.0f;
    if (unscale) {
      g = g / scale;
      s.grad[i] = static_cast<scalar_t>(g);
    }
    adam_update<float, kAmsgrad, kDecoupled>(p, g, m, v, vmax, c.scalars, c.maximize, c.has_weight_decay);
    s.param[i] = static_cast<scalar_t>(p);
    s.exp_avg[i] = static_cast<scalar_t>(m);
    s.exp_avg_sq[i] = static_cast<scalar_t>(v);
    if (kAmsgrad) s.max_exp_avg_sq[i] = static_cast<scalar_t>(vmax);
  }
}

template <typename scalar_t, bool kAmsgrad, bool kDecoupled>
void update_all(const std::vector<Segment<scalar_t>>& segments, const std::vector<int64_t>& offsets,
                const StepConfig& config) {
  const int64_t total = offsets.back();
  at::parallel_for(0, total, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
    // offsets[k] is where tensor k starts; find the last tensor starting at or before `begin`.
    size_t k = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
    int64_t position = begin;
    while (position < end) {
      const int64_t tensor_end = std::min(end, offsets[k + 1]);
      update_range<scalar_t, kAmsgrad, kDecoupled>(segments[k], position - offsets[k], tensor_end - offsets[k],
                                                   config);
      position = tensor_end;
      ++k;
    }
  });
}

void fused_adam_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, const at::Tensor& step,
                    const std::optional<at::Tensor>& clock, const at::Tensor& schedule, double beta1, double beta2,
                    double eps, double weight_decay, bool decoupled_weight_decay, bool amsgrad, bool maximize,
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const FusedAdamArgs args{params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, clock, schedule,
                           beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize,
                           grad_scale, found_inf};
  check_fused_adam_args(args);
  check_schedule_program(schedule);
  if (params.empty()) {
    return;
  }
  if (found_inf.has_value() && found_inf->item<float>() != 0.0f) {
    return;  // an AMP overflow: nothing changes, not even the step counter
  }

  int64_t* step_ptr = step.data_ptr<int64_t>();
  const int64_t t = clock.has_value() ? clock->item<int64_t>() : *step_ptr;
  const ScheduleValue value = evaluate_schedule(schedule.data_ptr<double>(), t);
  // A finite negative lr is what torch computes for some chains (a cosine with eta_min after a
  // decay to zero): it is followed, as torch follows it. Non-finite values never are.
  TORCH_CHECK(std::isfinite(value.lr), "fused_adam_: the schedule gives lr=", value.lr,
              " at clock ", t, " (a tabulated schedule asked past what was uploaded?)");
  const double step_beta1 = std::isnan(value.beta1) ? beta1 : value.beta1;
  TORCH_CHECK(step_beta1 >= 0.0 && step_beta1 < 1.0, "fused_adam_: the schedule gives beta1=", step_beta1,
              " at clock ", t);

  // A grad whose strides differ from its param's is copied into the param's layout; with AMP the
  // unscaled copy is written back afterwards.
  std::vector<at::Tensor> laid_out_grads(grads.begin(), grads.end());
  std::vector<size_t> copied;
  for (size_t i = 0; i < params.size(); ++i) {
    if (grads[i].strides() != params[i].strides()) {
      laid_out_grads[i] = at::empty_like(params[i]).copy_(grads[i]);
      copied.push_back(i);
    }
  }

  StepConfig config;
  config.scalars = make_adam_scalars(value.lr, step_beta1, beta2, eps, weight_decay, *step_ptr + 1);
  config.maximize = maximize;
  config.has_weight_decay = weight_decay != 0.0;
  config.grad_scale = grad_scale.has_value() ? grad_scale->data_ptr<float>() : nullptr;

  const auto update = [&](auto zero) {
    using scalar_t = decltype(zero);
    std::vector<Segment<scalar_t>> segments;
    std::vector<int64_t> offsets{0};
    segments.reserve(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      segments.push_back({params[i].data_ptr<scalar_t>(), laid_out_grads[i].data_ptr<scalar_t>(),
                          exp_avgs[i].data_ptr<scalar_t>(), exp_avg_sqs[i].data_ptr<scalar_t>(),
                          amsgrad ? max_exp_avg_sqs[i].data_ptr<scalar_t>() : nullptr});
      offsets.push_back(offsets.back() + params[i].numel());
    }
    if (amsgrad) {
      decoupled_weight_decay ? update_all<scalar_t, true, true>(segments, offsets, config)
                             : update_all<scalar_t, true, false>(segments, offsets, config);
    } else {
      decoupled_weight_decay ? update_all<scalar_t, false, true>(segments, offsets, config)
                             : update_all<scalar_t, false, false>(segments, offsets, config);
    }
  };
  switch (params[0].scalar_type()) {
    case at::kFloat: update(float{}); break;
    case at::kHalf: update(at::Half{}); break;
    default: update(at::BFloat16{}); break;  // check_fused_adam_args admits no other dtype
  }

  if (grad_scale.has_value()) {
    for (size_t i : copied) {
      grads[i].copy_(laid_out_grads[i]);
    }
  }
  *step_ptr += 1;
}

}  // namespace

TORCH_LIBRARY_IMPL(lrfused, CPU, m) {
  m.impl("fused_adam_", &fused_adam_cpu);
}

}  // namespace lrfused
