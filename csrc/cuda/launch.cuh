// LRFUSED_LAUNCH: the one way lrfused's sources launch a kernel, so that the same files build with
// nvcc and for the CPU emulation of tests/cuda/emulation (HIP-CPU), with no text rewriting.
//
//   LRFUSED_LAUNCH(kernel, grid, block, shared_bytes, stream, args...);
//
// With nvcc it is the triple-chevron launch; built for the emulation (LRFUSED_CUDA_EMULATION, set
// by scripts/cuda_emulation_check.sh), it calls the emulation's launch, which runs the kernel's
// blocks on the CPU or, while the stream captures, records the launch into the graph.
#pragma once

#if defined(LRFUSED_CUDA_EMULATION)
#define LRFUSED_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  ::lrfused_emulation::launch(kernel, (grid), (block), (shared_bytes), (stream), __VA_ARGS__)
#else
#define LRFUSED_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  kernel<<<(grid), (block), (shared_bytes), (stream)>>>(__VA_ARGS__)
#endif
