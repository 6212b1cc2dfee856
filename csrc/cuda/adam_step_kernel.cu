// The multi-tensor step kernel of every update rule, with its schedule (see note [One launch per step] in the header).
#include "adam_step_kernel.cuh"

#include <atomic>
#include <type_traits>

#include "../common/step_plan.h"
#include "launch.cuh"

namespace lrfused {
namespace cuda {
namespace {

// torch's opmath: float64 for float64 params, float32 for the others.
template <typename scalar_t>
using OpmathOf = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

__device__ __forceinline__ float to_opmath(float x) { return x; }
__device__ __forceinline__ double to_opmath(double x) { return x; }
__device__ __forceinline__ float to_opmath(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_opmath(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_opmath(OpmathOf<T> x);
template <>
__device__ __forceinline__ float from_opmath<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ double from_opmath<double>(double x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_opmath<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_opmath<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// kPackElements of scalar_t, moved as aligned accesses (16 bytes of float, 8 of a 16-bit type,
// 32 of double: two 16-byte accesses).
template <typename scalar_t>
struct alignas(kPackElements * sizeof(scalar_t)) Pack {
  scalar_t value[kPackElements];
};

// Packs per thread and iteration: kUnroll, but one for float64, whose five arrays of packs in
// flight would otherwise need twice the registers (note [Block shape]).
template <typename scalar_t>
constexpr int kPacksOf = sizeof(scalar_t) == 8 ? 1 : kUnroll;

struct BlockState {
  StepScalars scalars;  // the bucket's rule's, narrowed to its opmath type by the element loop
  float grad_scale;
  int32_t rule;          // the bucket's UpdateRuleKind
  int32_t flags;         // the bucket's
  int32_t element_type;  // the bucket's
  bool has_weight_decay;
  bool skip;     // AMP overflow or an unusable schedule value: nothing changes
  bool invalid;  // the schedule value was unusable: counted in invalid_steps
};

template <typename scalar_t, bool kAmsgrad, bool kDecoupled>
__device__ __forceinline__ void update_element(scalar_t& param, scalar_t& grad, scalar_t& exp_avg, scalar_t& exp_avg_sq,
                                               scalar_t* max_exp_avg_sq, const AdamScalars<OpmathOf<scalar_t>>& scalars,
                                               OpmathOf<scalar_t> grad_scale, bool maximize, bool has_weight_decay,
                                               bool unscale) {
  using opmath_t = OpmathOf<scalar_t>;
  opmath_t p = to_opmath(param);
  opmath_t g = to_opmath(grad);
  opmath_t m = to_opmath(exp_avg);
  opmath_t v = to_opmath(exp_avg_sq);
  opmath_t vmax = kAmsgrad ? to_opmath(*max_exp_avg_sq) : opmath_t(0);
  if (unscale) {
    g = g / grad_scale;
    grad = from_opmath<scalar_t>(g);
  }
  adam_update<opmath_t, opmath_t, kAmsgrad, kDecoupled>(p, g, m, v, vmax, scalars, maximize, has_weight_decay);
  param = from_opmath<scalar_t>(p);
  exp_avg = from_opmath<scalar_t>(m);
  exp_avg_sq = from_opmath<scalar_t>(v);
  if (kAmsgrad) *max_exp_avg_sq = from_opmath<scalar_t>(vmax);
}

template <typename scalar_t, bool kAmsgrad, bool kDecoupled>
__device__ __noinline__ void update_chunk(const TensorEntry& tensor, int64_t begin, int64_t end,
                                          const BlockState& state, bool maximize, bool has_weight_decay, bool unscale) {
  auto* param = static_cast<scalar_t*>(tensor.param);
  auto* grad = static_cast<scalar_t*>(tensor.grad);
  auto* exp_avg = static_cast<scalar_t*>(tensor.state[kAdamExpAvg]);
  auto* exp_avg_sq = static_cast<scalar_t*>(tensor.state[kAdamExpAvgSq]);
  auto* max_exp_avg_sq = static_cast<scalar_t*>(tensor.state[kAdamMaxExpAvgSq]);
  using opmath_t = OpmathOf<scalar_t>;
  const AdamScalars<opmath_t> scalars = scalars_as<opmath_t>(state.scalars.scalars);
  const opmath_t grad_scale = static_cast<opmath_t>(state.grad_scale);
  using P = Pack<scalar_t>;
  constexpr int kPacks = kPacksOf<scalar_t>;
  int64_t vector_end = begin;
  if (tensor.aligned) {
    // begin is a multiple of kChunkSize, hence of a whole step of the loop: the packs stay
    // aligned, and every thread's kPacks packs are inside [begin, vector_end).
    constexpr int64_t kStepElements = static_cast<int64_t>(kBlockThreads) * kPackElements * kPacks;
    vector_end = begin + (end - begin) / kStepElements * kStepElements;
    for (int64_t base = begin + static_cast<int64_t>(threadIdx.x) * kPackElements; base < vector_end;
         base += kStepElements) {
      P p[kPacks], g[kPacks], m[kPacks], v[kPacks], x[kPacks];
      // All loads first: the pointers may alias as far as the compiler knows, so loads written
      // after a store would wait for it.
#pragma unroll
      for (int u = 0; u < kPacks; ++u) {
        const int64_t i = base + static_cast<int64_t>(u) * kBlockThreads * kPackElements;
        p[u] = *reinterpret_cast<const P*>(param + i);
        g[u] = *reinterpret_cast<const P*>(grad + i);
        m[u] = *reinterpret_cast<const P*>(exp_avg + i);
        v[u] = *reinterpret_cast<const P*>(exp_avg_sq + i);
        if (kAmsgrad) x[u] = *reinterpret_cast<const P*>(max_exp_avg_sq + i);
      }
#pragma unroll
      for (int u = 0; u < kPacks; ++u) {
#pragma unroll
        for (int k = 0; k < kPackElements; ++k) {
          update_element<scalar_t, kAmsgrad, kDecoupled>(p[u].value[k], g[u].value[k], m[u].value[k], v[u].value[k],
                                                         &x[u].value[k], scalars, grad_scale, maximize,
                                                         has_weight_decay, unscale);
        }
      }
#pragma unroll
      for (int u = 0; u < kPacks; ++u) {
        const int64_t i = base + static_cast<int64_t>(u) * kBlockThreads * kPackElements;
        *reinterpret_cast<P*>(param + i) = p[u];
        *reinterpret_cast<P*>(exp_avg + i) = m[u];
        *reinterpret_cast<P*>(exp_avg_sq + i) = v[u];
        if (unscale) *reinterpret_cast<P*>(grad + i) = g[u];
        if (kAmsgrad) *reinterpret_cast<P*>(max_exp_avg_sq + i) = x[u];
      }
    }
  }
  // The tail of an aligned chunk, or a whole chunk of a tensor with an unaligned pointer.
  for (int64_t i = vector_end + threadIdx.x; i < end; i += blockDim.x) {
    update_element<scalar_t, kAmsgrad, kDecoupled>(param[i], grad[i], exp_avg[i], exp_avg_sq[i],
                                                   kAmsgrad ? max_exp_avg_sq + i : nullptr, scalars, grad_scale,
                                                   maximize, has_weight_decay, unscale);
  }
}

// The rules other than Adam (note [The seam of an update rule] in csrc/README.md): a rule's Math
// names the states it reads, narrows its scalars to the opmath type S (once per chunk, as
// update_chunk narrows Adam's: read per element through the shared BlockState, which the stores may
// alias as far as the compiler knows, they would be loaded and converted again for every element),
// and applies its element function from csrc/common/ to them.
template <bool kMomentum, bool kNesterov>
struct SgdMath {
  static constexpr __device__ bool has(int k) { return k == kSgdMomentumBuffer && kMomentum; }
  template <typename S>
  struct Scalars {
    SgdScalars<S> sgd;
    bool first_step;
  };
  template <typename S>
  static __device__ Scalars<S> narrow(const StepScalars& wide) {
    return {scalars_as<S>(wide.sgd), wide.first_step};
  }
  template <typename S>
  static __device__ __forceinline__ void apply(S& p, S g, S (&st)[kMaxStates], const Scalars<S>& s, bool maximize,
                                               bool has_weight_decay) {
    sgd_update<S, S, kMomentum, kNesterov>(p, g, st[kSgdMomentumBuffer], s.sgd, maximize, has_weight_decay,
                                           s.first_step);
  }
};

template <bool kCentered, bool kMomentum>
struct RmspropMath {
  static constexpr __device__ bool has(int k) {
    return k == kRmspropSquareAvg || (k == kRmspropMomentumBuffer && kMomentum) || (k == kRmspropGradAvg && kCentered);
  }
  template <typename S>
  using Scalars = RmspropScalars<S>;
  template <typename S>
  static __device__ Scalars<S> narrow(const StepScalars& wide) {
    return scalars_as<S>(wide.rmsprop);
  }
  template <typename S>
  static __device__ __forceinline__ void apply(S& p, S g, S (&st)[kMaxStates], const Scalars<S>& s, bool maximize,
                                               bool has_weight_decay) {
    rmsprop_update<S, S, kCentered, kMomentum>(p, g, st[kRmspropSquareAvg], st[kRmspropMomentumBuffer],
                                               st[kRmspropGradAvg], s, maximize, has_weight_decay);
  }
};

struct AdagradMath {
  static constexpr __device__ bool has(int k) { return k == kAdagradSum; }
  template <typename S>
  using Scalars = AdagradScalars<S>;
  template <typename S>
  static __device__ Scalars<S> narrow(const StepScalars& wide) {
    return scalars_as<S>(wide.adagrad);
  }
  template <typename S>
  static __device__ __forceinline__ void apply(S& p, S g, S (&st)[kMaxStates], const Scalars<S>& s, bool maximize,
                                               bool has_weight_decay) {
    adagrad_update<S, S>(p, g, st[kAdagradSum], s, maximize, has_weight_decay);
  }
};

// A rule's scalars as its chunk holds them, in the opmath type of scalar_t.
template <typename Math, typename scalar_t>
using NarrowScalars = typename Math::template Scalars<OpmathOf<scalar_t>>;

// One element of a rule's update in its opmath type: `st` holds its states in scalar_t (those the
// rule does not keep are neither read nor written).
template <typename scalar_t, typename Math>
__device__ __forceinline__ void update_rule_element(scalar_t& param, scalar_t& grad, scalar_t (&st)[kMaxStates],
                                                    const NarrowScalars<Math, scalar_t>& scalars,
                                                    OpmathOf<scalar_t> grad_scale, bool maximize, bool has_weight_decay,
                                                    bool unscale) {
  using opmath_t = OpmathOf<scalar_t>;
  opmath_t p = to_opmath(param);
  opmath_t g = to_opmath(grad);
  opmath_t wide_st[kMaxStates] = {opmath_t(0), opmath_t(0), opmath_t(0)};
#pragma unroll
  for (int k = 0; k < kMaxStates; ++k) {
    if (Math::has(k)) wide_st[k] = to_opmath(st[k]);
  }
  if (unscale) {
    g = g / grad_scale;
    grad = from_opmath<scalar_t>(g);
  }
  Math::apply(p, g, wide_st, scalars, maximize, has_weight_decay);
  param = from_opmath<scalar_t>(p);
#pragma unroll
  for (int k = 0; k < kMaxStates; ++k) {
    if (Math::has(k)) st[k] = from_opmath<scalar_t>(wide_st[k]);
  }
}

// A chunk of a rule other than Adam, walked as update_chunk walks Adam's: packs of kPackElements
// when every pointer is aligned (all loads of an iteration before its stores), then element by
// element, each thread striding over the chunk.
template <typename scalar_t, typename Math>
__device__ __noinline__ void update_rule_chunk(const TensorEntry& tensor, int64_t begin, int64_t end,
                                               const BlockState& state, bool unscale) {
  auto* param = static_cast<scalar_t*>(tensor.param);
  auto* grad = static_cast<scalar_t*>(tensor.grad);
  scalar_t* const states[kMaxStates] = {static_cast<scalar_t*>(tensor.state[0]),
                                        static_cast<scalar_t*>(tensor.state[1]),
                                        static_cast<scalar_t*>(tensor.state[2])};
  const NarrowScalars<Math, scalar_t> scalars = Math::template narrow<OpmathOf<scalar_t>>(state.scalars);
  const auto grad_scale = static_cast<OpmathOf<scalar_t>>(state.grad_scale);
  const bool maximize = (state.flags & kFlagMaximize) != 0;
  const bool has_weight_decay = state.has_weight_decay;
  using P = Pack<scalar_t>;
  constexpr int kPacks = kPacksOf<scalar_t>;
  int64_t vector_end = begin;
  if (tensor.aligned) {
    constexpr int64_t kStepElements = static_cast<int64_t>(kBlockThreads) * kPackElements * kPacks;
    vector_end = begin + (end - begin) / kStepElements * kStepElements;
    for (int64_t base = begin + static_cast<int64_t>(threadIdx.x) * kPackElements; base < vector_end;
         base += kStepElements) {
      P p[kPacks], g[kPacks], s[kMaxStates][kPacks];
#pragma unroll
      for (int u = 0; u < kPacks; ++u) {
        const int64_t i = base + static_cast<int64_t>(u) * kBlockThreads * kPackElements;
        p[u] = *reinterpret_cast<const P*>(param + i);
        g[u] = *reinterpret_cast<const P*>(grad + i);
#pragma unroll
        for (int k = 0; k < kMaxStates; ++k) {
          if (Math::has(k)) s[k][u] = *reinterpret_cast<const P*>(states[k] + i);
        }
      }
#pragma unroll
      for (int u = 0; u < kPacks; ++u) {
#pragma unroll
        for (int e = 0; e < kPackElements; ++e) {
          scalar_t st[kMaxStates] = {};
#pragma unroll
          for (int k = 0; k < kMaxStates; ++k) {
            if (Math::has(k)) st[k] = s[k][u].value[e];
          }
          update_rule_element<scalar_t, Math>(p[u].value[e], g[u].value[e], st, scalars, grad_scale, maximize,
                                              has_weight_decay, unscale);
#pragma unroll
          for (int k = 0; k < kMaxStates; ++k) {
            if (Math::has(k)) s[k][u].value[e] = st[k];
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kPacks; ++u) {
        const int64_t i = base + static_cast<int64_t>(u) * kBlockThreads * kPackElements;
        *reinterpret_cast<P*>(param + i) = p[u];
        if (unscale) *reinterpret_cast<P*>(grad + i) = g[u];
#pragma unroll
        for (int k = 0; k < kMaxStates; ++k) {
          if (Math::has(k)) *reinterpret_cast<P*>(states[k] + i) = s[k][u];
        }
      }
    }
  }
  // The tail of an aligned chunk, or a whole chunk of a tensor with an unaligned pointer.
  for (int64_t i = vector_end + threadIdx.x; i < end; i += blockDim.x) {
    scalar_t st[kMaxStates] = {};
#pragma unroll
    for (int k = 0; k < kMaxStates; ++k) {
      if (Math::has(k)) st[k] = states[k][i];
    }
    update_rule_element<scalar_t, Math>(param[i], grad[i], st, scalars, grad_scale, maximize, has_weight_decay,
                                        unscale);
#pragma unroll
    for (int k = 0; k < kMaxStates; ++k) {
      if (Math::has(k)) states[k][i] = st[k];
    }
  }
}

template <typename scalar_t>
__device__ __forceinline__ void update_other_rule(const TensorEntry& tensor, int64_t begin, int64_t end,
                                                  const BlockState& state, bool unscale) {
  const int32_t flags = state.flags;
  const bool momentum = (flags & kFlagMomentum) != 0;
  switch (static_cast<UpdateRuleKind>(state.rule)) {
    case UpdateRuleKind::kSgd:
      if (!momentum) {
        update_rule_chunk<scalar_t, SgdMath<false, false>>(tensor, begin, end, state, unscale);
      } else if (flags & kFlagNesterov) {
        update_rule_chunk<scalar_t, SgdMath<true, true>>(tensor, begin, end, state, unscale);
      } else {
        update_rule_chunk<scalar_t, SgdMath<true, false>>(tensor, begin, end, state, unscale);
      }
      break;
    case UpdateRuleKind::kRmsprop:
      if (flags & kFlagCentered) {
        if (momentum) {
          update_rule_chunk<scalar_t, RmspropMath<true, true>>(tensor, begin, end, state, unscale);
        } else {
          update_rule_chunk<scalar_t, RmspropMath<true, false>>(tensor, begin, end, state, unscale);
        }
      } else if (momentum) {
        update_rule_chunk<scalar_t, RmspropMath<false, true>>(tensor, begin, end, state, unscale);
      } else {
        update_rule_chunk<scalar_t, RmspropMath<false, false>>(tensor, begin, end, state, unscale);
      }
      break;
    default: update_rule_chunk<scalar_t, AdagradMath>(tensor, begin, end, state, unscale); break;
  }
}

// A bucket's scalars in float64: one thread of a block runs this when the block's chunk changes
// bucket, outlined so that its double-precision code does not weigh on the registers of the loop.
__device__ __noinline__ void compute_block_state(const LaunchArgs& args, int32_t bucket, BlockState& state) {
  state.invalid = false;
  state.skip = args.found_inf != nullptr && *args.found_inf != 0.0f;
  state.grad_scale = args.grad_scale != nullptr ? *args.grad_scale : 1.0f;
  const BucketSpec& spec = args.buckets[bucket];
  state.rule = spec.rule;
  state.flags = spec.flags;
  state.element_type = spec.element_type;
  state.has_weight_decay = spec.weight_decay != 0.0;
  if (!state.skip) {
    const StepScalars s = bucket_scalars(spec, args.deferred);
    state.scalars = s;
    state.invalid = !s.usable;
    state.skip = state.invalid;
  }
}

template <typename scalar_t>
__device__ __forceinline__ void update_typed(const TensorEntry& tensor, int64_t begin, int64_t end,
                                             const BlockState& state, int32_t flags, bool has_weight_decay,
                                             bool unscale) {
  if (state.rule != static_cast<int32_t>(UpdateRuleKind::kAdam)) {
    update_other_rule<scalar_t>(tensor, begin, end, state, unscale);
    return;
  }
  const bool maximize = (flags & kFlagMaximize) != 0;
  switch (flags & (kFlagAmsgrad | kFlagDecoupled)) {
    case 0: update_chunk<scalar_t, false, false>(tensor, begin, end, state, maximize, has_weight_decay, unscale); break;
    case kFlagDecoupled:
      update_chunk<scalar_t, false, true>(tensor, begin, end, state, maximize, has_weight_decay, unscale);
      break;
    case kFlagAmsgrad:
      update_chunk<scalar_t, true, false>(tensor, begin, end, state, maximize, has_weight_decay, unscale);
      break;
    default: update_chunk<scalar_t, true, true>(tensor, begin, end, state, maximize, has_weight_decay, unscale); break;
  }
}

// One chunk, in its bucket's dtype and flags. Outlined, as update_chunk is, so that the kernel's
// loop keeps nothing in registers across it.
__device__ __noinline__ void update_task(const LaunchArgs& args, int32_t task, const BlockState& state) {
  const ChunkTask work = args.tasks[task];
  const TensorEntry tensor = args.tensors[work.tensor];
  const int64_t begin = static_cast<int64_t>(work.chunk) * kChunkSize;
  const int64_t end = begin + kChunkSize < tensor.numel ? begin + kChunkSize : tensor.numel;
  const bool unscale = args.grad_scale != nullptr;
  switch (static_cast<ElementType>(state.element_type)) {
    case ElementType::kFloat16:
      update_typed<__half>(tensor, begin, end, state, state.flags, state.has_weight_decay, unscale);
      break;
    case ElementType::kBFloat16:
      update_typed<__nv_bfloat16>(tensor, begin, end, state, state.flags, state.has_weight_decay, unscale);
      break;
    case ElementType::kFloat64:
      update_typed<double>(tensor, begin, end, state, state.flags, state.has_weight_decay, unscale);
      break;
    default: update_typed<float>(tensor, begin, end, state, state.flags, state.has_weight_decay, unscale); break;
  }
}

// The writer's part (note [One launch per step]), by every thread of the last block.
__device__ __noinline__ void finish_step(const LaunchArgs& args) {
  const bool amp_skipped = args.found_inf != nullptr && *args.found_inf != 0.0f;
  if (!amp_skipped) {
    for (int32_t b = threadIdx.x; b < args.num_buckets; b += blockDim.x) {
      const BucketSpec& bucket = args.buckets[b];
      if (bucket_scalars(bucket, args.deferred).usable) {
        *bucket.step += 1;
      } else if (args.invalid_steps != nullptr) {
        atomicAdd(reinterpret_cast<unsigned long long*>(args.invalid_steps), 1ull);
      }
    }
  }
  __syncthreads();  // every bucket read the old words and clocks
  const DeferredSteps& d = args.deferred;
  if (moves_words(d)) {
    for (int64_t g = threadIdx.x; g < d.group_count; g += blockDim.x) {
      const HeldValue held = held_after(d, g);
      double* node = d.words + g * kHeldWords;
      node[kHeldLr] = held.lr;
      node[kHeldBeta1] = held.beta1;
    }
  }
  __syncthreads();  // every group read the old clocks
  if (threadIdx.x == 0) {
    commit_clocks(d);
    args.counters->next_task = 0u;
    args.counters->blocks_done = 0u;
    __threadfence();
  }
}

__global__ void __launch_bounds__(kBlockThreads, kMinBlocksPerSM)
    adam_step_kernel(const __grid_constant__ LaunchArgs args) {
  __shared__ BlockState state;
  __shared__ int32_t claimed;
  __shared__ int32_t state_bucket;
  __shared__ bool is_last;
  if (threadIdx.x == 0) state_bucket = -1;
  while (true) {
    if (threadIdx.x == 0) {
      const int32_t task = static_cast<int32_t>(atomicAdd(&args.counters->next_task, 1u));
      claimed = task;
      if (task < args.num_tasks) {
        const int32_t bucket = args.tensors[args.tasks[task].tensor].bucket;
        if (bucket != state_bucket) {
          compute_block_state(args, bucket, state);
          state_bucket = bucket;
        }
      }
    }
    __syncthreads();
    const int32_t task = claimed;
    if (task >= args.num_tasks) break;
    if (!state.skip) update_task(args, task, state);
    __syncthreads();  // every thread is done with `claimed` and `state` before thread 0 claims again
  }
  // Every block has stopped claiming (and reading) before it takes its ticket.
  if (threadIdx.x == 0) {
    __threadfence();
    const unsigned int ticket = atomicAdd(&args.counters->blocks_done, 1u);
    is_last = ticket == gridDim.x - 1;
  }
  __syncthreads();
  if (is_last) {
    __threadfence();
    finish_step(args);
  }
}

}  // namespace

int resident_blocks(int device) {
  // Neither the SM count nor the occupancy changes while the process runs, but both belong to a
  // device (two GPUs of one process may differ): asked once per device, not at every step.
  constexpr int kCachedDevices = 64;
  static std::atomic<int> cached[kCachedDevices] = {};
  const bool cacheable = device >= 0 && device < kCachedDevices;
  if (cacheable) {
    const int known = cached[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
    (void)cudaGetLastError();
    sms = 1;
  }
  // The occupancy API answers for the current device, which the caller's guard has set.
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, adam_step_kernel, kBlockThreads, 0) != cudaSuccess) {
    (void)cudaGetLastError();
    per_sm = kMinBlocksPerSM;
  }
  const int blocks = sms * (per_sm > 0 ? per_sm : 1);
  if (cacheable) cached[device].store(blocks, std::memory_order_relaxed);
  return blocks;
}

cudaError_t launch_adam_step(const LaunchArgs& args, int num_blocks, cudaStream_t stream) {
  if (num_blocks <= 0) return cudaErrorInvalidValue;
  LRFUSED_LAUNCH(adam_step_kernel, num_blocks, kBlockThreads, 0, stream, args);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace lrfused
