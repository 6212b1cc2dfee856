// The CUDA kernel of lrfused::fused_adam_, free of torch so that CI compiles it with nvcc alone
// (csrc/cuda/fused_adam_kernel.cu). The torch glue is csrc/cuda/fused_adam.cu.
//
// note [One launch per step]
// All the tensors of a call are described by a table in device memory (TensorEntry), and the work
// by a list of chunks (ChunkTask: a tensor and a range of kChunkSize elements), so any number of
// tensors goes in one launch; the glue builds the table once per set of pointers and reuses it.
// Each block evaluates the schedule at the clock and the bias corrections once (thread 0, float64,
// the shared csrc/common code) and then walks its chunks with 16-byte vector accesses. The step
// counter is advanced inside the same launch by the last block to finish: every block reads the
// counter before it takes its ticket from `blocks_done`, so the block holding the last ticket
// knows that all reads are done. found_inf (AMP) is read on the device: a skipped step changes
// nothing, the counter included.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/adam_math.h"
#include "../common/lr_schedule.h"

namespace lrfused {
namespace cuda {

constexpr int kChunkSize = 65536;    // elements of one tensor per task
constexpr int kBlockThreads = 512;
// Two resident blocks per SM (at most 64 registers a thread): enough loads in flight to saturate
// HBM, as torch's fused Adam reached after trimming its registers to 64.
constexpr int kMinBlocksPerSM = 2;
constexpr int kVectorBytes = 16;

// Element types, as the torch glue names them without including torch.
enum class ElementType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct TensorEntry {
  void* param;
  void* grad;
  void* exp_avg;
  void* exp_avg_sq;
  void* max_exp_avg_sq;  // null without AMSGrad
  int64_t numel;
  int32_t aligned;  // every pointer 16-byte aligned: the vector path applies
  int32_t padding;
};

struct ChunkTask {
  int32_t tensor;
  int32_t chunk;  // elements [chunk * kChunkSize, min(numel, (chunk + 1) * kChunkSize))
};

struct LaunchArgs {
  const TensorEntry* tensors;
  const ChunkTask* tasks;
  int32_t num_tasks;
  int64_t* step;
  const int64_t* clock;     // null: the schedule reads the step counter
  const double* schedule;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  bool maximize;
  const float* grad_scale;  // null without AMP
  const float* found_inf;   // null without AMP
  unsigned int* blocks_done;  // zero before and after every launch
};

// Launches the kernel on `stream`; returns the launch's error code.
cudaError_t launch_fused_adam(ElementType type, bool amsgrad, bool decoupled, const LaunchArgs& args,
                              int num_blocks, cudaStream_t stream);

}  // namespace cuda
}  // namespace lrfused
