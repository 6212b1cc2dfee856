// Evaluates an encoded learning-rate schedule at an integer clock t, in float64.
//
// note [Schedule encoding]
// A schedule is a flat array of doubles (a "program") holding one root node. Every node is
//
//     [kind, length, param_0, param_1, ...]
//
// where `length` counts the whole node, its two header words and any child nodes included, so a
// reader can step over a node without knowing its kind. Composite nodes (SEQUENTIAL, PRODUCT, and
// CYCLIC with a tabulated scale function) store their children right after their own parameters.
// Values are absolute: the encoder (lrfused/schedules/) folds each param group's base lr into
// the parameters, so the same node kinds serve torch's schedulers and the schedule factories.
//
// Where each kind's words are is written once per language: `LAYOUTS` in
// lrfused/schedules/_layout.py (with the words' names) and `kNodeLayouts` below (with the counts
// only). The op `lrfused::schedule_encoding` reports this side's table and the tests compare the
// two. Adding a kind: a row in both tables, an enumerator, a case in `evaluate_node`, a node class
// in lrfused/schedules/_nodes.py (its attributes named as the row's words), and a strategy in
// tests/test_schedules.py (see csrc/README.md).
//
// Some parameters are slots that the device updates in place: the lr and beta1 of a HELD node
// (what a param group's lr is now: written by the host for a hand-written or tensor lr, by
// `advance_lr_` for the torch-compatible schedulers, by ReduceLROnPlateau's device ops) and the
// first_t and values of a TABLE node (tabulated Python functions).
#pragma once

#include <math.h>
#include <cstdint>

#include "host_device.h"

namespace lrfused {

enum ScheduleKind : int {
  kConstant = 0,
  kTable = 1,
  kStep = 2,
  kMultiStep = 3,
  kConstantFactor = 4,
  kLinear = 5,
  kExponential = 6,
  kPolynomial = 7,
  kCosine = 8,
  kWarmRestarts = 9,
  kCyclic = 10,
  kOneCycle = 11,
  kSequential = 12,
  kProduct = 13,
  kInverseSqrt = 14,
  kOneMinusSqrt = 15,
  kExpRamp = 16,
  kLinearRamp = 17,
  kHeld = 18,
  kNumScheduleKinds = 19,
};

// CyclicLR modes; the two table modes evaluate a child TABLE at the cycle or at t.
enum CyclicMode : int {
  kTriangular = 0,
  kTriangular2 = 1,
  kExpRange = 2,
  kScaleTableByCycle = 3,
  kScaleTableByIteration = 4,
  kNumCyclicModes = 5,
};

// Composites nest at most this deep (a warmup around a join of sequences is depth 3). The
// evaluator is unrolled at compile time to this depth, so the CUDA kernel has no recursion.
constexpr int kMaxScheduleDepth = 4;

// The double nearest pi, as Python's math.pi (M_PI is not standard C++).
constexpr double kPi = 3.141592653589793;

struct ScheduleValue {
  double lr;
  // NaN when the schedule does not cycle beta1 (the optimizer's beta1 applies).
  double beta1;
};

LRFUSED_HOST_DEVICE double schedule_nan() { return __builtin_nan(""); }

LRFUSED_HOST_DEVICE bool schedule_is_nan(double x) { return x != x; }

// Where a node's words are: `fixed_words` parameters; then, when `tail_count_word` >= 0,
// `params[tail_count_word] + tail_adjust` more; then the children: none when `child_word` < 0,
// `params[child_word]` of them when `child_if_at_least` is 0, else one when
// `params[child_word] >= child_if_at_least`.
struct NodeLayout {
  int64_t fixed_words;
  int64_t tail_count_word;
  int64_t tail_adjust;
  int64_t child_word;
  int64_t child_if_at_least;
};

// Indexed by ScheduleKind; the words of each kind named as in lrfused/schedules/_layout.py.
constexpr NodeLayout kNodeLayouts[kNumScheduleKinds] = {
    {1, -1, 0, -1, 0},                  // kConstant: value
    {2, 1, 0, -1, 0},                   // kTable: first_t, count, + count values
    {3, -1, 0, -1, 0},                  // kStep: init, step_size, gamma
    {3, 2, 0, -1, 0},                   // kMultiStep: init, gamma, count, + count sorted milestones
    {3, -1, 0, -1, 0},                  // kConstantFactor: init, factor, total_iters
    {4, -1, 0, -1, 0},                  // kLinear: init, start_factor, end_factor, total_iters
    {2, -1, 0, -1, 0},                  // kExponential: init, gamma
    {4, -1, 0, -1, 0},                  // kPolynomial: init, end, total_iters, power
    {4, -1, 0, -1, 0},                  // kCosine: init, floor, period, clamp
    {4, -1, 0, -1, 0},                  // kWarmRestarts: init, floor, T_0, T_mult
    {9, -1, 0, 4, kScaleTableByCycle},  // kCyclic: base, max, total, up_ratio, mode, gamma, base_m,
                                        //   max_m, cycle_momentum, + a TABLE child in the table modes
    {10, -1, 0, -1, 0},                 // kOneCycle: initial, max, min, total, pct_start, three_phase,
                                        //   cos, cycle_momentum, base_m, max_m
    {1, 0, -1, 0, 0},                   // kSequential: count, + count - 1 boundaries, + count children
    {2, -1, 0, 1, 0},                   // kProduct: init, count, + count children
    {3, -1, 0, -1, 0},                  // kInverseSqrt: init, timescale, shift
    {3, -1, 0, -1, 0},                  // kOneMinusSqrt: init, end, total_iters
    {3, -1, 0, -1, 0},                  // kExpRamp: start, end, num_iter
    {3, -1, 0, -1, 0},                  // kLinearRamp: start, end, num_iter
    {2, -1, 0, -1, 0},                  // kHeld: lr, beta1 (NaN: the optimizer's beta1)
};

// Number of parameter words a node of `kind` has before its children, given the `available`
// words that follow its header; -1 for an unknown kind. Host only, like the validation.
inline int64_t expected_param_count(int kind, const double* params, int64_t available) {
  if (kind < 0 || kind >= kNumScheduleKinds) return -1;
  const NodeLayout& layout = kNodeLayouts[kind];
  if (layout.tail_count_word < 0 || available <= layout.tail_count_word) return layout.fixed_words;
  return layout.fixed_words + static_cast<int64_t>(params[layout.tail_count_word]) + layout.tail_adjust;
}

// Number of child nodes after the parameters of a node of a known `kind`.
inline int64_t expected_child_count(int kind, const double* params) {
  const NodeLayout& layout = kNodeLayouts[kind];
  if (layout.child_word < 0) return 0;
  const double word = params[layout.child_word];
  if (layout.child_if_at_least > 0) return word >= static_cast<double>(layout.child_if_at_least) ? 1 : 0;
  return static_cast<int64_t>(word);
}

namespace detail {

LRFUSED_HOST_DEVICE double cosine_anneal(double start, double end, double fraction) {
  // Written as torch writes it, so that the float64 rounding matches.
  return end + (start - end) / 2.0 * (::cos(kPi * fraction) + 1.0);
}

LRFUSED_HOST_DEVICE double linear_anneal(double start, double end, double fraction) {
  return (end - start) * fraction + start;
}

LRFUSED_HOST_DEVICE double table_value(const double* p, int64_t t) {
  const int64_t first = static_cast<int64_t>(p[0]);
  const int64_t count = static_cast<int64_t>(p[1]);
  if (t < first || t >= first + count) {
    return schedule_nan();  // past the tabulated steps: the update is skipped and counted (note [Unusable schedule
                            // values])
  }
  return p[2 + (t - first)];
}

LRFUSED_HOST_DEVICE double multi_step(const double* p, int64_t t) {
  const int64_t count = static_cast<int64_t>(p[2]);
  int64_t passed = 0;
  for (int64_t i = 0; i < count; ++i) {
    passed += static_cast<int64_t>(p[3 + i]) <= t ? 1 : 0;
  }
  return p[0] * ::pow(p[1], static_cast<double>(passed));
}

// CosineAnnealingWarmRestarts: cycle boundaries B_{k+1} = B_k + T_0 * T_mult^k found by integer
// accumulation, which is what torch's step() does; its float log formula misplaces exact restarts.
LRFUSED_HOST_DEVICE double warm_restarts(const double* p, int64_t t) {
  const int64_t t_0 = static_cast<int64_t>(p[2]);
  const int64_t t_mult = static_cast<int64_t>(p[3]);
  int64_t t_cur = t;
  int64_t t_i = t_0;
  if (t_mult == 1) {
    t_cur = t % t_0;
  } else {
    while (t_cur >= t_i) {
      t_cur -= t_i;
      t_i *= t_mult;
    }
  }
  return p[1] + (p[0] - p[1]) * (1.0 + ::cos(kPi * static_cast<double>(t_cur) / static_cast<double>(t_i))) / 2.0;
}

LRFUSED_HOST_DEVICE ScheduleValue one_cycle(const double* p, int64_t step) {
  const double initial = p[0], peak = p[1], minimum = p[2];
  const double total = p[3], pct_start = p[4];
  const bool three_phase = p[5] != 0.0, use_cos = p[6] != 0.0, cycle_momentum = p[7] != 0.0;
  const double base_m = p[8], max_m = p[9];
  // Past total_steps torch raises; the kernel holds the value reached at total_steps.
  const double t = static_cast<double>(step) > total ? total : static_cast<double>(step);
  double ends[3], lr_from[3], lr_to[3], m_from[3], m_to[3];
  int phases;
  if (three_phase) {
    phases = 3;
    ends[0] = pct_start * total - 1.0;
    lr_from[0] = initial;
    lr_to[0] = peak;
    m_from[0] = max_m;
    m_to[0] = base_m;
    ends[1] = 2.0 * pct_start * total - 2.0;
    lr_from[1] = peak;
    lr_to[1] = initial;
    m_from[1] = base_m;
    m_to[1] = max_m;
    ends[2] = total - 1.0;
    lr_from[2] = initial;
    lr_to[2] = minimum;
    m_from[2] = max_m;
    m_to[2] = max_m;
  } else {
    phases = 2;
    ends[0] = pct_start * total - 1.0;
    lr_from[0] = initial;
    lr_to[0] = peak;
    m_from[0] = max_m;
    m_to[0] = base_m;
    ends[1] = total - 1.0;
    lr_from[1] = peak;
    lr_to[1] = minimum;
    m_from[1] = base_m;
    m_to[1] = max_m;
  }
  double start = 0.0;
  for (int i = 0; i < phases; ++i) {
    if (t <= ends[i] || i == phases - 1) {
      const double fraction = (t - start) / (ends[i] - start);
      ScheduleValue v;
      v.lr = use_cos ? cosine_anneal(lr_from[i], lr_to[i], fraction) : linear_anneal(lr_from[i], lr_to[i], fraction);
      v.beta1 = !cycle_momentum ? schedule_nan()
                : use_cos       ? cosine_anneal(m_from[i], m_to[i], fraction)
                                : linear_anneal(m_from[i], m_to[i], fraction);
      return v;
    }
    start = ends[i];
  }
  return ScheduleValue{schedule_nan(), schedule_nan()};
}

template <int Depth>
LRFUSED_HOST_DEVICE_OUTLINED ScheduleValue evaluate_node(const double* node, int64_t t);

// CyclicLR, including torch's float arithmetic for the position in the cycle.
template <int Depth>
LRFUSED_HOST_DEVICE ScheduleValue cyclic(const double* p, int64_t step) {
  // The cycle length and the up ratio are stored as torch's CyclicLR keeps them (total_size,
  // step_ratio), so the float64 arithmetic is the same.
  const double base = p[0], peak = p[1], total = p[2], ratio = p[3];
  const int mode = static_cast<int>(p[4]);
  const double gamma = p[5], base_m = p[6], max_m = p[7];
  const bool cycle_momentum = p[8] != 0.0;
  const double t = static_cast<double>(step);
  const double cycle = ::floor(1.0 + t / total);
  const double x = 1.0 + t / total - cycle;
  const double factor = x <= ratio ? x / ratio : (x - 1.0) / (ratio - 1.0);
  double scale = 1.0;
  switch (mode) {
    case kTriangular: scale = 1.0; break;
    case kTriangular2: scale = ::pow(2.0, 1.0 - cycle); break;  // torch: 1 / 2 ** (cycle - 1), exact either way
    case kExpRange: scale = ::pow(gamma, t); break;
    case kScaleTableByCycle: scale = evaluate_node<Depth - 1>(p + 9, static_cast<int64_t>(cycle)).lr; break;
    default: scale = evaluate_node<Depth - 1>(p + 9, step).lr; break;
  }
  ScheduleValue v;
  v.lr = base + (peak - base) * factor * scale;
  v.beta1 = cycle_momentum ? max_m - (max_m - base_m) * factor * scale : schedule_nan();
  return v;
}

template <int Depth>
LRFUSED_HOST_DEVICE_OUTLINED ScheduleValue evaluate_node(const double* node, int64_t t) {
  if constexpr (Depth <= 0) {
    return ScheduleValue{schedule_nan(), schedule_nan()};
  } else {
    const int kind = static_cast<int>(node[0]);
    const double* p = node + 2;
    const double nan = schedule_nan();
    const double td = static_cast<double>(t);
    switch (kind) {
      case kConstant: return {p[0], nan};
      case kTable: return {table_value(p, t), nan};
      case kStep: return {p[0] * ::pow(p[2], ::floor(td / p[1])), nan};
      case kMultiStep: return {multi_step(p, t), nan};
      case kConstantFactor: return {p[0] * (td < p[2] ? p[1] : 1.0), nan};
      case kLinear: {
        const double done = td < p[3] ? td : p[3];
        double factor = p[1] + (p[2] - p[1]) * done / p[3];
        // torch's formula, kept inside [start, end]: at the end it can round past it (to -7e-18
        // for an end factor of 0), which would make a negative lr.
        const double low = p[1] < p[2] ? p[1] : p[2], high = p[1] < p[2] ? p[2] : p[1];
        factor = factor < low ? low : (factor > high ? high : factor);
        return {p[0] * factor, nan};
      }
      case kExponential: return {p[0] * ::pow(p[1], td), nan};
      case kPolynomial: {
        const double progress = (td < p[2] ? td : p[2]) / p[2];
        return {p[1] + (p[0] - p[1]) * ::pow(1.0 - progress, p[3]), nan};
      }
      case kCosine: {
        if (p[3] != 0.0 && td >= p[2]) {
          return {p[1], nan};
        }
        return {p[1] + (p[0] - p[1]) * (1.0 + ::cos(kPi * td / p[2])) / 2.0, nan};
      }
      case kWarmRestarts: return {warm_restarts(p, t), nan};
      case kCyclic: return cyclic<Depth>(p, t);
      case kOneCycle: return one_cycle(p, t);
      case kSequential: {
        const int64_t count = static_cast<int64_t>(p[0]);
        const double* child = p + count;  // the boundaries take count - 1 words after p[0]
        int64_t start = 0;
        for (int64_t i = 0; i < count; ++i) {
          const bool last = i == count - 1;
          const int64_t next = last ? 0 : static_cast<int64_t>(p[1 + i]);
          if (last || t < next) {
            return evaluate_node<Depth - 1>(child, t - start);
          }
          start = next;
          child += static_cast<int64_t>(child[1]);
        }
        return {nan, nan};
      }
      case kProduct: {
        const int64_t count = static_cast<int64_t>(p[1]);
        const double* child = p + 2;
        ScheduleValue v{p[0], nan};
        for (int64_t i = 0; i < count; ++i) {
          const ScheduleValue c = evaluate_node<Depth - 1>(child, t);
          v.lr *= c.lr;
          if (schedule_is_nan(v.beta1)) {
            v.beta1 = c.beta1;
          }
          child += static_cast<int64_t>(child[1]);
        }
        return v;
      }
      case kInverseSqrt: return {p[0] / ::sqrt((td + p[2]) / p[1]), nan};
      case kOneMinusSqrt: {
        const double progress = (td < p[2] ? td : p[2]) / p[2];
        return {p[1] + (p[0] - p[1]) * (1.0 - ::sqrt(progress)), nan};
      }
      case kExpRamp: {
        const double last = p[2] - 1.0;  // the ramps hold end_lr once they reach it
        return {p[0] * ::pow(p[1] / p[0], (td < last ? td : last) / last), nan};
      }
      case kLinearRamp: {
        const double last = p[2] - 1.0;
        return {p[0] + (td < last ? td : last) / last * (p[1] - p[0]), nan};
      }
      case kHeld: return {p[0], p[1]};
      default: return {nan, nan};
    }
  }
}

}  // namespace detail

// The schedule's learning rate (and beta1, NaN when not cycled) at clock t.
LRFUSED_HOST_DEVICE ScheduleValue evaluate_schedule(const double* program, int64_t t) {
  return detail::evaluate_node<kMaxScheduleDepth>(program, t);
}

// Checks that a program is well formed: every node's kind is known, its length covers its
// parameters and children, and nothing reads past `length` words. Returns nullptr when the
// program is valid, else a message. Host only: the op checks programs that live on the CPU.
inline const char* validate_schedule_node(const double* node, int64_t available, int depth) {
  if (depth > kMaxScheduleDepth) return "schedule nests composites deeper than kMaxScheduleDepth";
  if (available < 2) return "schedule node is truncated";
  const double kind_word = node[0];
  const double length_word = node[1];
  if (!(kind_word >= 0 && kind_word < static_cast<double>(kNumScheduleKinds)) || kind_word != ::floor(kind_word)) {
    return "schedule node has an unknown kind";
  }
  if (!(length_word >= 2 && length_word <= static_cast<double>(available)) || length_word != ::floor(length_word)) {
    return "schedule node length is out of bounds";
  }
  const int kind = static_cast<int>(kind_word);
  const int64_t length = static_cast<int64_t>(length_word);
  const double* p = node + 2;
  const int64_t words = length - 2;
  const int64_t params = expected_param_count(kind, p, words);
  if (params < 0 || params > words) return "schedule node is shorter than its parameters";
  if (kind == kCyclic) {
    const int mode = static_cast<int>(p[4]);
    if (mode < kTriangular || mode >= kNumCyclicModes) return "CYCLIC schedule has an unknown mode";
  } else if (kind == kTable) {
    if (p[1] < 0) return "TABLE schedule has a negative count";
  } else if (kind == kMultiStep) {
    if (p[2] < 0) return "MULTI_STEP schedule has a negative count";
  } else if (kind == kSequential) {
    if (p[0] < 1) return "SEQUENTIAL schedule needs at least one child";
  }
  const int64_t children = expected_child_count(kind, p);
  int64_t offset = params;
  for (int64_t i = 0; i < children; ++i) {
    const char* error = validate_schedule_node(p + offset, words - offset, depth + 1);
    if (error != nullptr) return error;
    offset += static_cast<int64_t>(p[offset + 1]);
  }
  if (offset != words) return "schedule node length does not match its contents";
  return nullptr;
}

inline const char* validate_schedule(const double* program, int64_t length) {
  const char* error = validate_schedule_node(program, length, 1);
  if (error == nullptr && static_cast<int64_t>(program[1]) != length) {
    return "schedule program has words after its root node";
  }
  return error;
}

}  // namespace lrfused
