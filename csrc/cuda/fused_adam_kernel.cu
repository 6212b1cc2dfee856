// The multi-tensor Adam kernel with its schedule (see note [One launch per step] in the header).
#include "fused_adam_kernel.cuh"

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

// kVectorBytes of scalar_t, moved as one 16-byte access.
template <typename scalar_t>
struct alignas(kVectorBytes) Pack {
  static constexpr int kSize = kVectorBytes / sizeof(scalar_t);
  scalar_t value[kSize];
};

struct BlockState {
  AdamScalars scalars;
  float grad_scale;
  bool skip;
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
  constexpr int kSize = P::kSize;
  int64_t vector_end = begin;
  if (tensor.aligned) {
    // begin is a multiple of kChunkSize, hence of kSize: the packs stay 16-byte aligned.
    vector_end = begin + (end - begin) / kSize * kSize;
    for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * kSize; i < vector_end;
         i += static_cast<int64_t>(blockDim.x) * kSize) {
      P p = *reinterpret_cast<const P*>(param + i);
      P g = *reinterpret_cast<const P*>(grad + i);
      P m = *reinterpret_cast<const P*>(exp_avg + i);
      P v = *reinterpret_cast<const P*>(exp_avg_sq + i);
      P x;
      if (kAmsgrad) x = *reinterpret_cast<const P*>(max_exp_avg_sq + i);
#pragma unroll
      for (int k = 0; k < kSize; ++k) {
        update_element<scalar_t, kAmsgrad, kDecoupled>(p.value[k], g.value[k], m.value[k], v.value[k], &x.value[k],
                                                       state, maximize, has_weight_decay, unscale);
      }
      *reinterpret_cast<P*>(param + i) = p;
      *reinterpret_cast<P*>(exp_avg + i) = m;
      *reinterpret_cast<P*>(exp_avg_sq + i) = v;
      if (unscale) *reinterpret_cast<P*>(grad + i) = g;
      if (kAmsgrad) *reinterpret_cast<P*>(max_exp_avg_sq + i) = x;
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
  state.skip = args.found_inf != nullptr && *args.found_inf != 0.0f;
  state.grad_scale = args.grad_scale != nullptr ? *args.grad_scale : 1.0f;
  const int64_t step = *args.step;
  if (!state.skip) {
    const int64_t t = args.clock != nullptr ? *args.clock : step;
    const ScheduleValue value = evaluate_schedule(args.schedule, t);
    const double beta1 = schedule_is_nan(value.beta1) ? args.beta1 : value.beta1;
    state.scalars = make_adam_scalars(value.lr, beta1, args.beta2, args.eps, args.weight_decay, step + 1);
  }
  return state;
}

template <typename scalar_t, bool kAmsgrad, bool kDecoupled>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocksPerSM) fused_adam_kernel(const LaunchArgs args) {
  __shared__ BlockState state;
  if (threadIdx.x == 0) {
    state = compute_block_state(args);
  }
  __syncthreads();
  if (!state.skip) {
    const bool has_weight_decay = args.weight_decay != 0.0;
    const bool unscale = args.grad_scale != nullptr;
    for (int32_t task = blockIdx.x; task < args.num_tasks; task += gridDim.x) {
      const ChunkTask work = args.tasks[task];
      const TensorEntry tensor = args.tensors[work.tensor];
      const int64_t begin = static_cast<int64_t>(work.chunk) * kChunkSize;
      const int64_t end = begin + kChunkSize < tensor.numel ? begin + kChunkSize : tensor.numel;
      update_chunk<scalar_t, kAmsgrad, kDecoupled>(tensor, begin, end, state, args.maximize, has_weight_decay,
                                                   unscale);
    }
  }
  // The last block to finish advances the step counter (see the note in the header).
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    const unsigned int ticket = atomicAdd(args.blocks_done, 1u);
    if (ticket == gridDim.x - 1) {
      if (!state.skip) {
        *args.step += 1;
      }
      *args.blocks_done = 0u;
      __threadfence();
    }
  }
}

template <typename scalar_t>
cudaError_t launch_typed(bool amsgrad, bool decoupled, const LaunchArgs& args, int num_blocks, cudaStream_t stream) {
  const dim3 grid(num_blocks), block(kBlockThreads);
  if (amsgrad) {
    if (decoupled) {
      fused_adam_kernel<scalar_t, true, true><<<grid, block, 0, stream>>>(args);
    } else {
      fused_adam_kernel<scalar_t, true, false><<<grid, block, 0, stream>>>(args);
    }
  } else if (decoupled) {
    fused_adam_kernel<scalar_t, false, true><<<grid, block, 0, stream>>>(args);
  } else {
    fused_adam_kernel<scalar_t, false, false><<<grid, block, 0, stream>>>(args);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_fused_adam(ElementType type, bool amsgrad, bool decoupled, const LaunchArgs& args, int num_blocks,
                              cudaStream_t stream) {
  switch (type) {
    case ElementType::kFloat32: return launch_typed<float>(amsgrad, decoupled, args, num_blocks, stream);
    case ElementType::kFloat16: return launch_typed<__half>(amsgrad, decoupled, args, num_blocks, stream);
    case ElementType::kBFloat16: return launch_typed<__nv_bfloat16>(amsgrad, decoupled, args, num_blocks, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace lrfused
