// LRFUSED_HOST_DEVICE marks the functions of csrc/common/ that the CPU kernel, the CUDA kernel and
// the C++ unit tests all compile from the same source. No torch include may appear in
// csrc/common/: CI compiles these headers with nvcc alone.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LRFUSED_HOST_DEVICE __host__ __device__ __forceinline__
// For the schedule evaluator: one thread of a block runs it once per step, so it is compiled once
// per translation unit instead of being inlined into every kernel instantiation.
#define LRFUSED_HOST_DEVICE_OUTLINED __host__ __device__ __noinline__  // templates only
#else
#define LRFUSED_HOST_DEVICE inline
#define LRFUSED_HOST_DEVICE_OUTLINED inline
#endif
