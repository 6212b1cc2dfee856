// LRFUSED_HOST_DEVICE marks the functions of csrc/common/ that the CPU kernel, the CUDA kernel and
// the C++ unit tests all compile from the same source. No torch include may appear in
// csrc/common/: CI compiles these headers with nvcc alone.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LRFUSED_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LRFUSED_HOST_DEVICE inline
#endif
