// The CUDA kernel of lrfused's step ops (adam_step_, table_step_), free of torch so that CI
// compiles it with nvcc alone (csrc/cuda/adam_step_kernel.cu) and tests it without torch
// (tests/cuda/test_kernel.cu, tests/cuda/test_step_launch.cu). The torch glue is
// csrc/cuda/adam_step.cu.
//
// note [One launch per step]
// All the tensors of a call, of every group and dtype, are described by a table in device memory
// (TensorEntry, naming its BucketSpec), and the work by a list of chunks (ChunkTask: a tensor and a
// range of kChunkSize elements), so any number of tensors goes in one launch; the glue builds the
// table once per set of pointers and keeps it. A block claims chunks one at a time from the
// launch's counters until none is left; when a chunk belongs to another bucket than the last,
// thread 0 computes that bucket's lr (the deferred scheduler steps applied in registers, note [One
// op per step]) and bias corrections once (float64, the shared csrc/common code), and the block
// walks the chunk with vector accesses of kPackElements elements, in its bucket's dtype and flags.
//
// The writer's part runs inside the same launch, in the last block to finish: every block reads
// the step counters, the words and the clocks before it takes its ticket from
// `counters->blocks_done`, so the block holding the last ticket knows that all reads are done. Its
// threads advance the step counters (one bucket each), write the new HELD words (one group each),
// then thread 0 moves the clocks and puts both launch counters back to zero. found_inf (AMP) is
// read on the device: a skipped step changes no parameter and no step counter.
//
// note [Grid size]
// The grid is what the device holds resident at once (kMinBlocksPerSM blocks of kBlockThreads
// per SM, the occupancy API says how many), never more than there are chunks. With dynamic
// claiming that costs one float64 schedule evaluation per resident block (not one per chunk, and
// never in a second wave of blocks), and the load stays balanced to within one chunk whatever the
// mix of tensor sizes: a block that drew small chunks simply claims more of them.
//
// A schedule value Adam cannot use skips the call on the device and is counted: see note
// [Unusable schedule values] in csrc/common/step_scalars.h.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/adam_math.h"
#include "../common/step_plan.h"

namespace lrfused {
namespace cuda {

constexpr int kChunkSize = 65536;  // elements of one tensor per task
// note [Block shape]
// A bucket's schedule is evaluated by a call (the float64 evaluator is outlined, as it must be:
// inlined it spills kilobytes), and so is the element loop of each dtype and flags (update_chunk,
// sixteen of them in one kernel): each gets its own register allocation, and the kernel's claim
// loop keeps almost nothing live across them. 256 threads and two resident blocks per SM leave
// 128 registers, and no element loop spills (nvcc -Xptxas -v, sm_80 and sm_90; checked by
// scripts/nvcc_check.sh); the claim loop and the writer save a few registers across their calls,
// once per chunk of kChunkSize elements. While one block evaluates a schedule the other keeps
// memory busy. The lower thread count is made up in loads in flight: each thread moves kUnroll
// packs of every array per iteration, loaded before any is stored (128 bytes of float32 in flight
// per thread).
constexpr int kBlockThreads = 256;
constexpr int kMinBlocksPerSM = 2;
// Elements per vector access (16 bytes of float32, 8 of a 16-bit type, 32 of float64), and packs
// per thread and iteration of the vector loop (one for float64).
constexpr int kPackElements = 4;
constexpr int kUnroll = 2;

inline int element_size(ElementType type) {
  switch (type) {
    case ElementType::kFloat64: return 8;
    case ElementType::kFloat32: return 4;
    default: return 2;
  }
}

struct ChunkTask {
  int32_t tensor;
  int32_t chunk;  // elements [chunk * kChunkSize, min(numel, (chunk + 1) * kChunkSize))
};

// The two counters one launch uses, zero before and after it. Launches that may overlap (two
// streams, a graph replay beside an eager call) must each have their own pair.
struct LaunchCounters {
  unsigned int blocks_done;
  unsigned int next_task;
};

struct LaunchArgs {
  const TensorEntry* tensors;
  const ChunkTask* tasks;
  const BucketSpec* buckets;  // in the table, with the tensors
  int32_t num_tasks;
  int32_t num_buckets;
  DeferredSteps deferred;   // by value: a deferred step's pointers change with every call
  const float* grad_scale;  // null without AMP
  const float* found_inf;   // null without AMP
  int64_t* invalid_steps;   // null: not counted (note [Unusable schedule values])
  LaunchCounters* counters;
};

// Blocks the device holds resident at once (the grid of note [Grid size]), asked of the runtime
// once per device. `device` must be the current device.
int resident_blocks(int device);

// Launches the kernel on `stream`; returns the launch's error code.
cudaError_t launch_adam_step(const LaunchArgs& args, int num_blocks, cudaStream_t stream);

}  // namespace cuda
}  // namespace lrfused
