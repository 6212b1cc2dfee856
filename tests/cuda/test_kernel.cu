// The CUDA kernel alone, without torch: built by scripts/nvcc_check.sh (CI, no GPU needed to
// build), executed on the CPU under emulation by scripts/cuda_emulation_check.sh (CI), run on a
// GPU by benchmarks/gpu_suite.sh, also under compute-sanitizer.
//
//   test_kernel            every check below except the tensor of more than 2^31 elements (under
//                          the emulation, that tensor's three chunks around 2^31 and its ends)
//   test_kernel --huge     that one too, whole (about 17 GB of device memory; not under the sanitizer)
//
// Each check compares the kernel with a host reference built from the same csrc/common code
// (bit for bit: both sides round the same way, the kernel being built with --fmad=false), or
// checks the bookkeeping of a launch: the step counter advances once per launch and not on an
// AMP overflow or an unusable schedule value, and the launch counters are back at zero after
// launches and after CUDA graph replays.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <vector>

#include "common/step_scalars.h"
#include "cuda/adam_step_kernel.cuh"
#include "test_support.h"

using namespace lrfused;
using namespace lrfused::cuda;
using namespace lrfused_test;

namespace {

// The opmath of an element type, as the kernel's: float64 for double, float32 for the others.
template <typename T>
using Op = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Host-side element conversions, the same roundings as the kernel's.
template <typename T>
Op<T> to_f(T x);
template <>
float to_f<float>(float x) {
  return x;
}
template <>
double to_f<double>(double x) {
  return x;
}
template <>
float to_f<__half>(__half x) {
  return __half2float(x);
}
template <>
float to_f<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <typename T>
T from_f(Op<T> x);
template <>
float from_f<float>(float x) {
  return x;
}
template <>
double from_f<double>(double x) {
  return x;
}
template <>
__half from_f<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

template <typename T>
ElementType type_of();
template <>
ElementType type_of<float>() {
  return ElementType::kFloat32;
}
template <>
ElementType type_of<double>() {
  return ElementType::kFloat64;
}
template <>
ElementType type_of<__half>() {
  return ElementType::kFloat16;
}
template <>
ElementType type_of<__nv_bfloat16>() {
  return ElementType::kBFloat16;
}

template <typename T>
const char* name_of();
template <>
const char* name_of<float>() {
  return "float32";
}
template <>
const char* name_of<double>() {
  return "float64";
}
template <>
const char* name_of<__half>() {
  return "float16";
}
template <>
const char* name_of<__nv_bfloat16>() {
  return "bfloat16";
}

template <typename T>
bool same_bits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// One tensor of the test on host and device; `offset` elements shift the device pointers, so that
// an odd offset makes the tensor unaligned for the vector path.
template <typename T>
struct TestTensor {
  int64_t numel;
  int offset;
  std::vector<T> p, g, m, v, x;  // host reference
  T *dp, *dg, *dm, *dv, *dx;     // device (allocations start `offset` elements earlier)
};

template <typename T>
TestTensor<T> make_tensor(int64_t numel, int offset, bool amsgrad) {
  TestTensor<T> t{numel, offset, {}, {}, {}, {}, {}, nullptr, nullptr, nullptr, nullptr, nullptr};
  auto fill = [&](std::vector<T>& a, float scale, bool positive) {
    a.resize(numel + offset);
    for (auto& e : a) e = from_f<T>(positive ? std::fabs(uniform()) * scale : uniform() * scale);
  };
  fill(t.p, 1.0f, false);
  fill(t.g, 4.0f, false);
  fill(t.m, 0.1f, false);
  fill(t.v, 0.01f, true);
  if (amsgrad) fill(t.x, 0.02f, true);
  t.dp = device_copy(t.p) + offset;
  t.dg = device_copy(t.g) + offset;
  t.dm = device_copy(t.m) + offset;
  t.dv = device_copy(t.v) + offset;
  t.dx = amsgrad ? device_copy(t.x) + offset : nullptr;
  return t;
}

template <typename T>
void free_tensor(TestTensor<T>& t) {
  T* const arrays[] = {t.dp, t.dg, t.dm, t.dv, t.dx};
  for (T* d : arrays) {
    if (d != nullptr) CHECK_CUDA(cudaFree(d - t.offset));
  }
}

// The device table of a launch, laid out as the torch glue lays it out.
struct DeviceTable {
  BucketSpec* bucket = nullptr;  // the launch's one bucket, written by launch_args
  TensorEntry* tensors = nullptr;
  ChunkTask* tasks = nullptr;
  LaunchCounters* counters = nullptr;
  int32_t num_tasks = 0;
};

template <typename T>
DeviceTable make_table(std::vector<TestTensor<T>>& tensors) {
  std::vector<TensorEntry> entries;
  std::vector<ChunkTask> tasks;
  const uintptr_t pack = kPackElements * sizeof(T);
  for (size_t i = 0; i < tensors.size(); ++i) {
    TestTensor<T>& t = tensors[i];
    TensorEntry e{t.dp, t.dg, t.dm, t.dv, t.dx, t.numel, 0, /*bucket=*/0};
    e.aligned = reinterpret_cast<uintptr_t>(t.dp) % pack == 0 && reinterpret_cast<uintptr_t>(t.dg) % pack == 0 &&
                reinterpret_cast<uintptr_t>(t.dm) % pack == 0 && reinterpret_cast<uintptr_t>(t.dv) % pack == 0 &&
                (t.dx == nullptr || reinterpret_cast<uintptr_t>(t.dx) % pack == 0);
    entries.push_back(e);
    for (int64_t c = 0; c * kChunkSize < t.numel; ++c)
      tasks.push_back({static_cast<int32_t>(i), static_cast<int32_t>(c)});
  }
  DeviceTable table;
  table.tensors = device_copy(entries);
  table.tasks = device_copy(tasks);
  CHECK_CUDA(cudaMalloc(&table.bucket, sizeof(BucketSpec)));
  CHECK_CUDA(cudaMalloc(&table.counters, sizeof(LaunchCounters)));
  CHECK_CUDA(cudaMemset(table.counters, 0, sizeof(LaunchCounters)));
  table.num_tasks = static_cast<int32_t>(tasks.size());
  return table;
}

void free_table(DeviceTable& table) {
  CHECK_CUDA(cudaFree(table.bucket));
  CHECK_CUDA(cudaFree(table.tensors));
  CHECK_CUDA(cudaFree(table.tasks));
  CHECK_CUDA(cudaFree(table.counters));
}

struct Scalars {  // device scalars of a launch
  int64_t* step;
  int64_t* invalid;
  double* schedule;
  float* grad_scale;
  float* found_inf;
};

Scalars make_scalars(const std::vector<double>& program) {
  Scalars s{};
  CHECK_CUDA(cudaMalloc(&s.step, sizeof(int64_t)));
  CHECK_CUDA(cudaMalloc(&s.invalid, sizeof(int64_t)));
  CHECK_CUDA(cudaMemset(s.step, 0, sizeof(int64_t)));
  CHECK_CUDA(cudaMemset(s.invalid, 0, sizeof(int64_t)));
  s.schedule = device_copy(program);
  CHECK_CUDA(cudaMalloc(&s.grad_scale, sizeof(float)));
  CHECK_CUDA(cudaMalloc(&s.found_inf, sizeof(float)));
  const float one = 1.0f, zero = 0.0f;
  CHECK_CUDA(cudaMemcpy(s.grad_scale, &one, sizeof(float), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(s.found_inf, &zero, sizeof(float), cudaMemcpyHostToDevice));
  return s;
}

void free_scalars(Scalars& s) {
  void* const pointers[] = {s.step, s.invalid, s.schedule, s.grad_scale, s.found_inf};
  for (void* p : pointers) CHECK_CUDA(cudaFree(p));
}

template <typename T>
T read_value(const T* device) {
  T value;
  CHECK_CUDA(cudaMemcpy(&value, device, sizeof(T), cudaMemcpyDeviceToHost));
  return value;
}

template <typename T>
void write_value(T* device, T value) {
  CHECK_CUDA(cudaMemcpy(device, &value, sizeof(T), cudaMemcpyHostToDevice));
}

struct Options {
  bool amsgrad = false;
  bool decoupled = true;
  bool maximize = false;
  bool unscale = false;  // pass grad_scale (AMP)
  bool amp = false;      // pass found_inf (AMP)
  double weight_decay = 0.1;
};

// One bucket holding every tensor of the table, with the schedule program as its program (as a
// `schedule=` optimizer's bucket has), and no deferred scheduler step.
LaunchArgs launch_args(const DeviceTable& table, const Scalars& s, const Options& o, ElementType type) {
  BucketSpec bucket{};
  bucket.step = s.step;
  bucket.program = s.schedule;
  bucket.group = -1;
  bucket.momentum = 0.9;
  bucket.decay = 0.999;
  bucket.eps = 1e-8;
  bucket.weight_decay = o.weight_decay;
  bucket.flags = (o.amsgrad ? kFlagAmsgrad : 0) | (o.decoupled ? kFlagDecoupled : 0) | (o.maximize ? kFlagMaximize : 0);
  bucket.element_type = static_cast<int32_t>(type);
  write_value(table.bucket, bucket);
  LaunchArgs args{};
  args.tensors = table.tensors;
  args.tasks = table.tasks;
  args.buckets = table.bucket;
  args.num_tasks = table.num_tasks;
  args.num_buckets = 1;
  args.grad_scale = o.unscale ? s.grad_scale : nullptr;
  args.found_inf = o.amp ? s.found_inf : nullptr;
  args.invalid_steps = s.invalid;
  args.counters = table.counters;
  return args;
}

// The host reference of one step of one tensor, elements [begin, end).
template <typename T>
void reference_step(TestTensor<T>& t, const AdamScalars<double>& wide, const Options& o, float grad_scale,
                    int64_t begin, int64_t end) {
  using S = Op<T>;
  const AdamScalars<S> scalars = scalars_as<S>(wide);
  const bool wd = o.weight_decay != 0.0;
  for (int64_t j = begin; j < end; ++j) {
    const int64_t i = j + t.offset;
    S p = to_f(t.p[i]), g = to_f(t.g[i]), m = to_f(t.m[i]), v = to_f(t.v[i]);
    S x = o.amsgrad ? to_f(t.x[i]) : S(0);
    if (o.unscale) {
      g = g / static_cast<S>(grad_scale);
      t.g[i] = from_f<T>(g);
    }
    if (o.amsgrad) {
      if (o.decoupled)
        adam_update<S, S, true, true>(p, g, m, v, x, scalars, o.maximize, wd);
      else
        adam_update<S, S, true, false>(p, g, m, v, x, scalars, o.maximize, wd);
    } else {
      if (o.decoupled)
        adam_update<S, S, false, true>(p, g, m, v, x, scalars, o.maximize, wd);
      else
        adam_update<S, S, false, false>(p, g, m, v, x, scalars, o.maximize, wd);
    }
    t.p[i] = from_f<T>(p);
    t.m[i] = from_f<T>(m);
    t.v[i] = from_f<T>(v);
    if (o.amsgrad) t.x[i] = from_f<T>(x);
  }
}

template <typename T>
int64_t count_mismatches(const TestTensor<T>& t, bool amsgrad, bool check_grad) {
  int64_t bad = 0;
  const size_t n = t.numel + t.offset;
  auto compare = [&](const std::vector<T>& expected, const T* device) {
    const std::vector<T> actual = host_copy(device - t.offset, n);
    for (size_t i = t.offset; i < n; ++i) bad += same_bits(actual[i], expected[i]) ? 0 : 1;
  };
  compare(t.p, t.dp);
  compare(t.m, t.dm);
  compare(t.v, t.dv);
  if (amsgrad) compare(t.x, t.dx);
  if (check_grad) compare(t.g, t.dg);
  return bad;
}

// Several steps of a mix of tensors (tails, unaligned, several chunks) on `blocks` blocks,
// compared bit for bit with the host reference after every step.
template <typename T>
void check_agreement(const Options& o, int blocks, const char* label) {
  std::vector<TestTensor<T>> tensors;
  tensors.push_back(make_tensor<T>(3 * kChunkSize + 4093, 0, o.amsgrad));  // several chunks and a tail
  tensors.push_back(make_tensor<T>(1, 0, o.amsgrad));
  tensors.push_back(make_tensor<T>(10001, 1, o.amsgrad));     // unaligned: scalar path
  tensors.push_back(make_tensor<T>(2048 * 5, 0, o.amsgrad));  // whole vector steps, no tail
  DeviceTable table = make_table(tensors);
  // A cosine from 1e-2 to 1e-4 over 20 steps: [kCosine, 6, init, floor, period, clamp].
  const std::vector<double> program = {kCosine, 6, 1e-2, 1e-4, 20, 0};
  Scalars s = make_scalars(program);
  const float grad_scale = 1024.0f;
  if (o.unscale) write_value(s.grad_scale, grad_scale);
  int64_t mismatches = 0;
  const int steps = 5;
  for (int k = 0; k < steps; ++k) {
    const StepScalars scalars = step_scalars(program.data(), k, 0.9, 0.999, 1e-8, o.weight_decay, k);
    CHECK_CUDA(launch_adam_step(launch_args(table, s, o, type_of<T>()), blocks, nullptr));
    CHECK_CUDA(cudaDeviceSynchronize());
    for (auto& tensor : tensors) reference_step(tensor, scalars.scalars, o, grad_scale, 0, tensor.numel);
    for (auto& tensor : tensors) mismatches += count_mismatches(tensor, o.amsgrad, o.unscale);
    // The grads change between steps, as they would in training.
    for (auto& tensor : tensors) {
      for (auto& e : tensor.g) e = from_f<T>(uniform() * (o.unscale ? grad_scale : 1.0f));
      CHECK_CUDA(
          cudaMemcpy(tensor.dg - tensor.offset, tensor.g.data(), tensor.g.size() * sizeof(T), cudaMemcpyHostToDevice));
    }
  }
  const LaunchCounters counters = read_value(table.counters);
  expect(mismatches == 0, std::string(label) + " " + name_of<T>() + ": " + std::to_string(mismatches) +
                              " elements differ from the host reference");
  expect(read_value(s.step) == steps, std::string(label) + ": the step counter advanced once per launch");
  expect(counters.blocks_done == 0 && counters.next_task == 0, std::string(label) + ": counters back at zero");
  for (auto& tensor : tensors) free_tensor(tensor);
  free_table(table);
  free_scalars(s);
}

template <typename T>
void check_all_variants() {
  for (int amsgrad = 0; amsgrad < 2; ++amsgrad) {
    for (int decoupled = 0; decoupled < 2; ++decoupled) {
      Options o;
      o.amsgrad = amsgrad;
      o.decoupled = decoupled;
      o.maximize = amsgrad && !decoupled;
      check_agreement<T>(
          o, 264,
          o.amsgrad ? (o.decoupled ? "amsgrad adamw" : "amsgrad adam maximize") : (o.decoupled ? "adamw" : "adam"));
    }
  }
  Options o;
  check_agreement<T>(o, 2, "two blocks striding over every chunk");
  o.unscale = o.amp = true;
  check_agreement<T>(o, 7, "grad_scale, unscaled grads written back");
  Options c;
  c.weight_decay = 0.0;
  check_agreement<T>(c, 64, "no weight decay");
}

// A step is skipped, and changes nothing, on an AMP overflow and on an unusable schedule value;
// only the second is counted.
void check_skips() {
  std::vector<TestTensor<float>> tensors;
  tensors.push_back(make_tensor<float>(70000, 0, false));
  DeviceTable table = make_table(tensors);
  Options o;
  o.amp = o.unscale = true;
  Scalars s = make_scalars({kConstant, 3, 1e-3});
  write_value(s.found_inf, 1.0f);
  CHECK_CUDA(launch_adam_step(launch_args(table, s, o, ElementType::kFloat32), 16, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  expect(count_mismatches(tensors[0], false, true) == 0, "found_inf: nothing changes, grads included");
  expect(read_value(s.step) == 0, "found_inf: the step counter stays");
  expect(read_value(s.invalid) == 0, "found_inf: not counted as an unusable schedule value");
  free_scalars(s);

  struct Case {
    std::vector<double> program;
    const char* what;
  };
  const double nan = std::nan("");
  const std::vector<Case> cases = {
      {{kConstant, 3, nan}, "a NaN lr"},
      {{kConstant, 3, INFINITY}, "an infinite lr"},
      {{kTable, 6, 0, 2, 1e-3, 1e-3}, "a table asked past what is on the device"},
      // A cyclic schedule whose beta1 starts at max_momentum = 1: 1 - beta1^t is zero (a beta1 of
      // 1.5 is not unusable: it takes torch's arithmetic, as the CPU tests check against torch).
      {{kCyclic, 11, 1e-3, 1e-2, 10, 0.5, kTriangular, 1.0, 0.8, 1.0, 1}, "a scheduled beta1 of 1"},
  };
  Options plain;
  for (const Case& c : cases) {
    Scalars bad = make_scalars(c.program);
    if (c.program[0] == static_cast<double>(kTable)) write_value<int64_t>(bad.step, 5);  // t = 5 is past [0, 2)
    const int64_t step_before = read_value(bad.step);
    for (int k = 0; k < 3; ++k) {
      CHECK_CUDA(launch_adam_step(launch_args(table, bad, plain, ElementType::kFloat32), 16, nullptr));
    }
    CHECK_CUDA(cudaDeviceSynchronize());
    expect(count_mismatches(tensors[0], false, true) == 0, std::string(c.what) + ": nothing changes");
    expect(read_value(bad.step) == step_before, std::string(c.what) + ": the step counter stays");
    expect(read_value(bad.invalid) == 3, std::string(c.what) + ": counted once per launch");
    const LaunchCounters counters = read_value(table.counters);
    expect(counters.blocks_done == 0 && counters.next_task == 0, std::string(c.what) + ": counters back at zero");
    free_scalars(bad);
  }
  free_tensor(tensors[0]);
  free_table(table);
}

// A launch captured in a CUDA graph and replayed 50 times: the step advances once per replay,
// the counters are zero after, and the result is the reference's after 50 steps.
void check_graph_replays() {
  std::vector<TestTensor<float>> tensors;
  tensors.push_back(make_tensor<float>(5 * kChunkSize + 3, 0, false));
  DeviceTable table = make_table(tensors);
  const std::vector<double> program = {kConstant, 3, 1e-3};
  Scalars s = make_scalars(program);
  Options o;
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  // The arguments are built (launch_args copies the bucket to the device with a synchronous
  // cudaMemcpy) before the capture opens: CUDA refuses legacy-stream work during a global capture.
  const LaunchArgs args = launch_args(table, s, o, ElementType::kFloat32);
  CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  CHECK_CUDA(launch_adam_step(args, 3, stream));
  CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  const int replays = 50;
  for (int k = 0; k < replays; ++k) CHECK_CUDA(cudaGraphLaunch(exec, stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));
  for (int k = 0; k < replays; ++k) {
    const StepScalars scalars = step_scalars(program.data(), k, 0.9, 0.999, 1e-8, o.weight_decay, k);
    reference_step(tensors[0], scalars.scalars, o, 1.0f, 0, tensors[0].numel);
  }
  expect(read_value(s.step) == replays, "graph: the step counter advanced once per replay");
  const LaunchCounters counters = read_value(table.counters);
  expect(counters.blocks_done == 0 && counters.next_task == 0, "graph: counters back at zero after 50 replays");
  expect(count_mismatches(tensors[0], false, false) == 0, "graph: 50 replays equal 50 reference steps");
  CHECK_CUDA(cudaGraphExecDestroy(exec));
  CHECK_CUDA(cudaGraphDestroy(graph));
  CHECK_CUDA(cudaStreamDestroy(stream));
  free_tensor(tensors[0]);
  free_table(table);
  free_scalars(s);
}

// One float16 tensor of 2^31 + 2053 elements (64-bit indexing), checked at its start, around
// 2^31 and at its end. `sampled`: the launch's table names only the chunks that hold those places
// (the first, the last before 2^31 and the tail), so that only they are filled and touched: what
// the CPU emulation runs, where device memory is the host's (allocated, never touched elsewhere).
void check_huge_tensor(bool sampled) {
  const int64_t numel = (int64_t{1} << 31) + 2053;
  const int64_t last_chunk = (numel - 1) / kChunkSize;
  const std::vector<int64_t> chunks = {0, (int64_t{1} << 31) / kChunkSize - 1, last_chunk};
  TestTensor<__half> t{numel, 0, {}, {}, {}, {}, {}, nullptr, nullptr, nullptr, nullptr, nullptr};
  __half* arrays[4];
  for (auto*& a : arrays) {
    CHECK_CUDA(cudaMalloc(&a, numel * sizeof(__half)));
  }
  // p = 0.5, g = 0.25, m = 0, v = 0 everywhere it is read: every element takes the same first step.
  const std::vector<std::pair<int, float>> fills = {{0, 0.5f}, {1, 0.25f}, {2, 0.0f}, {3, 0.0f}};
  std::vector<__half> block(sampled ? kChunkSize : 1 << 24);
  const auto fill_range = [&](__half* array, int64_t begin, int64_t end) {
    for (int64_t done = begin; done < end; done += block.size()) {
      const int64_t n = std::min<int64_t>(block.size(), end - done);
      CHECK_CUDA(cudaMemcpy(array + done, block.data(), n * sizeof(__half), cudaMemcpyHostToDevice));
    }
  };
  for (const auto& [index, value] : fills) {
    std::fill(block.begin(), block.end(), __float2half_rn(value));
    if (!sampled) fill_range(arrays[index], 0, numel);
    for (int64_t c : sampled ? chunks : std::vector<int64_t>{}) {
      fill_range(arrays[index], c * kChunkSize, std::min(numel, (c + 1) * kChunkSize));
    }
  }
  t.dp = arrays[0];
  t.dg = arrays[1];
  t.dm = arrays[2];
  t.dv = arrays[3];
  std::vector<TestTensor<__half>> tensors = {t};
  DeviceTable table = make_table(tensors);
  if (sampled) {
    std::vector<ChunkTask> tasks;
    for (int64_t c : chunks) tasks.push_back({0, static_cast<int32_t>(c)});
    CHECK_CUDA(cudaFree(table.tasks));
    table.tasks = device_copy(tasks);
    table.num_tasks = static_cast<int32_t>(tasks.size());
  }
  const std::vector<double> program = {kConstant, 3, 1e-3};
  Scalars s = make_scalars(program);
  Options o;
  int device = 0;
  CHECK_CUDA(cudaGetDevice(&device));
  const int blocks = std::min(resident_blocks(device), table.num_tasks);
  CHECK_CUDA(launch_adam_step(launch_args(table, s, o, ElementType::kFloat16), blocks, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  const StepScalars scalars = step_scalars(program.data(), 0, 0.9, 0.999, 1e-8, o.weight_decay, 0);
  float p = 0.5f, g = 0.25f, m = 0.0f, v = 0.0f, x = 0.0f;
  adam_update<float, float, false, true>(p, g, m, v, x, scalars_as<float>(scalars.scalars), false, true);
  const __half expected = __float2half_rn(p);
  int64_t bad = 0;
  const int64_t starts[] = {0, (int64_t{1} << 31) - 4096, numel - 4096};
  for (int64_t start : starts) {
    const std::vector<__half> got = host_copy(t.dp + start, 4096);
    for (const __half& e : got) bad += same_bits(e, expected) ? 0 : 1;
  }
  const std::string what = std::string("2^31 + 2053 elements") + (sampled ? " (three chunks)" : "");
  expect(bad == 0, what + ": " + std::to_string(bad) + " sampled params differ");
  expect(read_value(s.step) == 1, what + ": one step");
  for (auto* a : arrays) CHECK_CUDA(cudaFree(a));
  free_table(table);
  free_scalars(s);
}

}  // namespace

int main(int argc, char** argv) {
  const bool huge = argc > 1 && std::string(argv[1]) == "--huge";
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: nothing run\n");
    return 77;
  }
  check_all_variants<float>();
  check_all_variants<__half>();
  check_all_variants<__nv_bfloat16>();
  check_all_variants<double>();
  check_skips();
  check_graph_replays();
  if (huge) check_huge_tensor(/*sampled=*/false);
#if defined(LRFUSED_CUDA_EMULATION)
  check_huge_tensor(/*sampled=*/true);  // the 64-bit indexing, without touching 17 GB of host memory
#endif
  if (failures != 0) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all kernel checks passed%s\n", huge ? " (the tensor of more than 2^31 elements included)" : "");
  return 0;
}
