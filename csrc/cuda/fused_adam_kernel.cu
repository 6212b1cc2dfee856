// The multi-tensor Adam kernel with its schedule (see note [One launch per step] in the header).
#include "fused_adam_kernel.cuh"

#include "../common/step_scalars.h"

namespace lrfused {
namespace cuda {
namespace {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// kPackElements of scalar_t, moved as one aligned access (16 bytes of float, 8 of a 16-bit type).
template <typename scalar_t>
struct alignas(kPackElements * sizeof(scalar_t)) Pack {
  scalar_t value[kPackElements];
};

struct BlockState {
  AdamScalars scalars;
  float grad_scale;
  bool skip;     // AMP overflow or an unusable schedule value: nothing changes
  bool invalid;  // the schedule value was unusable: counted in invalid_steps
};

template <typename scalar_t, bool kAmsgrad, bool kDecoupled>
__device__ __forceinline__ void update_element(scalar_t& param, scalar_t& grad, scalar_t& exp_avg,
                                               scalar_t& exp_avg_sq, scalar_t* max_exp_avg_sq,
                                               const BlockState& state, bool maximize, bool has_weight_decay,
                                               bool unscale) {
  float p = to_float(param);
  float g = to_float(grad);
  float m = to_float(exp_avg);
  float v = to_float(exp_avg_sq);
  float vmax = kAmsgrad ? to_float(*max_exp_avg_sq) : 0.0f;
  if (unscale) {
    g = g / state.grad_scale;
    grad = from_float<scalar_t>(g);
  }
  adam_update<float, kAmsgrad, kDecoupled>(p, g, m, v, vmax, state.scalars, maximize, has_weight_decay);
  param = from_float<scalar_t>(p);
  exp_avg = from_float<scalar_t>(m);
  exp_avg_sq = from_float<scalar_t>(v);
  if (kAmsgrad) *max_exp_avg_sq = from_float<scalar_t>(vmax);
}

template <typename scalar_t, bool kAmsgrad, bool kDecoupled>
__device__ void update_chunk(const TensorEntry& tensor, int64_t begin, int64_t end, const BlockState& state,
                             bool maximize, bool has_weight_decay, bool unscale) {
  auto* param = static_cast<scalar_t*>(tensor.param);
  auto* grad = static_cast<scalar_t*>(tensor.grad);
  auto* exp_avg = static_cast<scalar_t*>(tensor.exp_avg);
  auto* exp_avg_sq = static_cast<scalar_t*>(tensor.exp_avg_sq);
  auto* max_exp_avg_sq = static_cast<scalar_t*>(tensor.max_exp_avg_sq);
  using P = Pack<scalar_t>;
  int64_t vector_end = begin;
  if (tensor.aligned) {
    // begin is a multiple of kChunkSize, hence of a whole step of the loop: the packs stay
    // aligned, and every thread's kUnroll packs are inside [begin, vector_end).
    constexpr int64_t kStepElements = static_cast<int64_t>(kBlockThreads) * kPackElements * kUnroll;
    vector_end = begin + (end - begin) / kStepElements * kStepElements;
    for (int64_t base = begin + static_cast<int64_t>(threadIdx.x) * kPackElements; base < vector_end;
         base += kStepElements) {
      P p[kUnroll], g[kUnroll], m[kUnroll], v[kUnroll], x[kUnroll];
      // All loads first: the pointers may alias as far as the compiler knows, so loads written
      // after a store would wait for it.
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = base + static_cast<int64_t>(u) * kBlockThreads * kPackElements;
        p[u] = *reinterpret_cast<const P*>(param + i);
        g[u] = *reinterpret_cast<const P*>(grad + i);
        m[u] = *reinterpret_cast<const P*>(exp_avg + i);
        v[u] = *reinterpret_cast<const P*>(exp_avg_sq + i);
        if (kAmsgrad) x[u] = *reinterpret_cast<const P*>(max_exp_avg_sq + i);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int k = 0; k < kPackElements; ++k) {
          update_element<scalar_t, kAmsgrad, kDecoupled>(p[u].value[k], g[u].value[k], m[u].value[k], v[u].value[k],
                                                         &x[u].value[k], state, maximize, has_weight_decay, unscale);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
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
                                                   kAmsgrad ? max_exp_avg_sq + i : nullptr, state, maximize,
                                                   has_weight_decay, unscale);
  }
}

// The per-step scalars, from the clock and the schedule in float64: one thread of each block runs
// this, outlined so that its double-precision code does not weigh on the registers of the loop.
__device__ __noinline__ BlockState compute_block_state(const LaunchArgs& args) {
  BlockState state;
  state.invalid = false;
  state.skip = args.found_inf != nullptr && *args.found_inf != 0.0f;
  state.grad_scale = args.grad_scale != nullptr ? *args.grad_scale : 1.0f;
  if (!state.skip) {
    const int64_t step = *args.step;
    const int64_t t = args.clock != nullptr ? *args.clock : step;
    const StepScalars s = step_scalars(args.schedule, t, args.beta1, args.beta2, args.eps, args.weight_decay, step);
    state.scalars = s.scalars;
    state.invalid = !s.usable;
    state.skip = state.invalid;
  }
  return state;
}

template <typename scalar_t, bool kAmsgrad, bool kDecoupled>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocksPerSM)
    fused_adam_kernel(const __grid_constant__ LaunchArgs args) {
  __shared__ BlockState state;
  __shared__ int32_t claimed;
  if (threadIdx.x == 0) {
    state = compute_block_state(args);
  }
  __syncthreads();
  if (!state.skip) {
    const bool has_weight_decay = args.weight_decay != 0.0;
    const bool unscale = args.grad_scale != nullptr;
    while (true) {
      if (threadIdx.x == 0) {
        claimed = static_cast<int32_t>(atomicAdd(&args.counters->next_task, 1u));
      }
      __syncthreads();
      const int32_t task = claimed;
      __syncthreads();  // every thread has read `claimed` before thread 0 claims again
      if (task >= args.num_tasks) break;
      const ChunkTask work = args.tasks[task];
      const TensorEntry tensor = args.tensors[work.tensor];
      const int64_t begin = static_cast<int64_t>(work.chunk) * kChunkSize;
      const int64_t end = begin + kChunkSize < tensor.numel ? begin + kChunkSize : tensor.numel;
      update_chunk<scalar_t, kAmsgrad, kDecoupled>(tensor, begin, end, state, args.maximize, has_weight_decay,
                                                   unscale);
    }
  }
  // The last block to finish advances the step counter (see the note in the header). Every block
  // has stopped claiming before it takes its ticket, so the counters can be reset here.
  if (threadIdx.x == 0) {
    __threadfence();
    const unsigned int ticket = atomicAdd(&args.counters->blocks_done, 1u);
    if (ticket == gridDim.x - 1) {
      if (!state.skip) {
        *args.step += 1;
      } else if (state.invalid && args.invalid_steps != nullptr) {
        *args.invalid_steps += 1;
      }
      args.counters->next_task = 0u;
      args.counters->blocks_done = 0u;
      __threadfence();
    }
  }
}

template <typename scalar_t, bool kAmsgrad, bool kDecoupled>
struct Variant {
  static cudaError_t launch(const LaunchArgs& args, int num_blocks, cudaStream_t stream) {
    fused_adam_kernel<scalar_t, kAmsgrad, kDecoupled><<<num_blocks, kBlockThreads, 0, stream>>>(args);
    return cudaGetLastError();
  }
  static int blocks_per_sm() {
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, fused_adam_kernel<scalar_t, kAmsgrad, kDecoupled>,
                                                      kBlockThreads, 0) != cudaSuccess) {
      (void)cudaGetLastError();
      blocks = kMinBlocksPerSM;
    }
    return blocks > 0 ? blocks : 1;
  }
};

template <typename scalar_t>
cudaError_t launch_typed(bool amsgrad, bool decoupled, const LaunchArgs& args, int num_blocks, cudaStream_t stream) {
  if (amsgrad) {
    return decoupled ? Variant<scalar_t, true, true>::launch(args, num_blocks, stream)
                     : Variant<scalar_t, true, false>::launch(args, num_blocks, stream);
  }
  return decoupled ? Variant<scalar_t, false, true>::launch(args, num_blocks, stream)
                   : Variant<scalar_t, false, false>::launch(args, num_blocks, stream);
}

template <typename scalar_t>
int blocks_per_sm_typed(bool amsgrad, bool decoupled) {
  // Occupancy does not change while the process runs: asked once per variant.
  static const int table[4] = {Variant<scalar_t, false, false>::blocks_per_sm(),
                               Variant<scalar_t, false, true>::blocks_per_sm(),
                               Variant<scalar_t, true, false>::blocks_per_sm(),
                               Variant<scalar_t, true, true>::blocks_per_sm()};
  return table[(amsgrad ? 2 : 0) + (decoupled ? 1 : 0)];
}

}  // namespace

int resident_blocks(ElementType type, bool amsgrad, bool decoupled, int device) {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
    (void)cudaGetLastError();
    sms = 1;
  }
  int per_sm = kMinBlocksPerSM;
  switch (type) {
    case ElementType::kFloat32: per_sm = blocks_per_sm_typed<float>(amsgrad, decoupled); break;
    case ElementType::kFloat16: per_sm = blocks_per_sm_typed<__half>(amsgrad, decoupled); break;
    case ElementType::kBFloat16: per_sm = blocks_per_sm_typed<__nv_bfloat16>(amsgrad, decoupled); break;
  }
  return sms * per_sm;
}

cudaError_t launch_fused_adam(ElementType type, bool amsgrad, bool decoupled, const LaunchArgs& args, int num_blocks,
                              cudaStream_t stream) {
  if (num_blocks <= 0) return cudaErrorInvalidValue;
  switch (type) {
    case ElementType::kFloat32: return launch_typed<float>(amsgrad, decoupled, args, num_blocks, stream);
    case ElementType::kFloat16: return launch_typed<__half>(amsgrad, decoupled, args, num_blocks, stream);
    case ElementType::kBFloat16: return launch_typed<__nv_bfloat16>(amsgrad, decoupled, args, num_blocks, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace lrfused
