// The one-launch step with several buckets, without torch: built and executed on the CPU under
// emulation by scripts/cuda_emulation_check.sh (CI), and on a GPU by benchmarks/gpu_suite.sh.
//
// Eight buckets (three dtypes; Adam's and one each of SGD, RMSprop and Adagrad; two buckets on one
// HELD group; one bucket with its own cosine read at a scheduler clock), three groups, deferred scheduler steps
// (applied once, skipped when already applied), AMP unscale and skip, an unusable bucket beside usable ones, a call
// with no chunk, and grids of one block, fewer blocks than chunks and more blocks than chunks. The tables are the
// extension's own (csrc/cuda/tensor_tables.cu's prepare_launch). After every launch,
// every element, step counter, clock, HELD word, `applied` and `invalid_steps` is compared bit for
// bit with a host reference built from the same csrc/common code in the order of note [One op per
// step], and the launch counters must be back at zero.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/step_plan.h"
#include "cuda/adam_step_kernel.cuh"
#include "cuda/tensor_tables.cuh"
#include "test_support.h"

using namespace lrfused;
using namespace lrfused::cuda;
using namespace lrfused_test;

namespace {

int element_bytes(ElementType type) { return type == ElementType::kFloat32 ? 4 : 2; }

// Element i of an array of `type`, as float, and back with the kernel's rounding.
float load(ElementType type, const unsigned char* base, int64_t i) {
  if (type == ElementType::kFloat32) return reinterpret_cast<const float*>(base)[i];
  if (type == ElementType::kFloat16) return __half2float(reinterpret_cast<const __half*>(base)[i]);
  return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(base)[i]);
}

void store(ElementType type, unsigned char* base, int64_t i, float value) {
  if (type == ElementType::kFloat32) {
    reinterpret_cast<float*>(base)[i] = value;
  } else if (type == ElementType::kFloat16) {
    reinterpret_cast<__half*>(base)[i] = __float2half_rn(value);
  } else {
    reinterpret_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(value);
  }
}

enum Array { kParam, kGrad, kExpAvg, kExpAvgSq, kMaxExpAvgSq, kArrays };

// One tensor: its five arrays on the host (the reference) and on the device, `offset` elements
// into each allocation (an odd offset makes the vector path unusable).
struct Tensor {
  int bucket;
  ElementType type;
  int64_t numel;
  int offset;
  bool has[kMaxStates];  // its bucket's rule keeps state k (arrays kExpAvg + k)
  std::vector<unsigned char> host[kArrays];
  unsigned char* device[kArrays] = {};
  void* pointer(int a) const { return device[a] ? device[a] + offset * element_bytes(type) : nullptr; }
};

// Everything a launch reads besides the tensors, on the host and the device.
struct Model {
  std::vector<Tensor> tensors;
  std::vector<int64_t> steps, clocks;
  int64_t applied = 0, invalid = 0;
  std::vector<double> words;  // three HELD nodes
  std::vector<double> cosine;
  std::vector<std::vector<double>> rules;
  int64_t *steps_d, *clocks_d, *applied_d, *invalid_d;
  double *words_d, *cosine_d;
  std::vector<double*> rules_d;
  float *scale_d, *found_inf_d;
  std::vector<BucketSpec> buckets_host, buckets_device;
  static constexpr int64_t kGroups = 3;
};

// Indexed rules: [offset of group g's node, for each g | the nodes].
std::vector<double> indexed_rules(const std::vector<std::vector<double>>& nodes) {
  std::vector<double> rules;
  double offset = 0;
  for (const auto& node : nodes) {
    rules.push_back(offset);
    offset += static_cast<double>(node.size());
  }
  for (const auto& node : nodes) rules.insert(rules.end(), node.begin(), node.end());
  return rules;
}

void randomize(Tensor& t, int array, float scale, bool positive) {
  auto& a = t.host[array];
  a.resize((t.numel + t.offset) * element_bytes(t.type));
  for (int64_t i = 0; i < t.numel + t.offset; ++i) {
    const float u = uniform();
    store(t.type, a.data(), i, positive ? std::fabs(u) * scale : u * scale);
  }
}

void upload(Tensor& t, int array) {
  auto& a = t.host[array];
  if (t.device[array] == nullptr) CHECK_CUDA(cudaMalloc(&t.device[array], a.size() + 64));
  CHECK_CUDA(cudaMemcpy(t.device[array], a.data(), a.size(), cudaMemcpyHostToDevice));
}

Model make_model() {
  Model m;
  const double nan = std::nan("");
  m.words = {kHeld, 4, 1e-2, nan, kHeld, 4, 3e-3, nan, kHeld, 4, 5e-3, 0.85};  // group 2 cycles beta1
  m.cosine = {kCosine, 6, 1e-2, 1e-4, 20, 0};
  m.steps = {0, 7, 0, 3, 0, 0, 2, 4};
  m.clocks = {2, 0};
  // Deferred steps alternate between two rules arrays: A (clock 0) chains a StepLR on every group;
  // B (clock 1) keeps group 0, sets group 1 to an exponential, chains a cosine on group 2.
  const std::vector<double> keep = {kRuleKeep, 2};
  const std::vector<double> step_lr = {kRuleChain, 7, kStep, 5, 1e-2, 2, 0.5};
  const std::vector<double> set_exponential = {kRuleSet, 6, kExponential, 4, 3e-3, 0.9};
  const std::vector<double> chain_cosine = {kRuleChain, 8, kCosine, 6, 5e-3, 1e-4, 10, 0};
  m.rules = {indexed_rules({step_lr, step_lr, step_lr}), indexed_rules({keep, set_exponential, chain_cosine})};
  m.words_d = device_copy(m.words);
  m.cosine_d = device_copy(m.cosine);
  m.steps_d = device_copy(m.steps);
  m.clocks_d = device_copy(m.clocks);
  m.applied_d = device_copy(std::vector<int64_t>{0});
  m.invalid_d = device_copy(std::vector<int64_t>{0});
  m.scale_d = device_copy(std::vector<float>{256.0f});
  m.found_inf_d = device_copy(std::vector<float>{0.0f});
  for (const auto& r : m.rules) m.rules_d.push_back(device_copy(r));

  struct BucketCase {
    int group;
    ElementType type;
    int flags;
    double weight_decay;
    UpdateRuleKind rule;
    double decay;  // Adam's beta2, SGD's dampening, RMSprop's alpha, Adagrad's lr_decay
  };
  constexpr UpdateRuleKind kAdam = UpdateRuleKind::kAdam;
  const BucketCase buckets[] = {
      {0, ElementType::kFloat32, kFlagDecoupled, 0.1, kAdam, 0.999},
      {1, ElementType::kFloat16, kFlagAmsgrad, 0.01, kAdam, 0.999},
      {2, ElementType::kBFloat16, kFlagDecoupled | kFlagMaximize, 0.1, kAdam, 0.999},
      {-1, ElementType::kFloat32, 0, 0.0, kAdam, 0.999},  // its own cosine (schedule=), read at its step
      {0, ElementType::kFloat16, kFlagDecoupled | kFlagAmsgrad, 0.0, kAdam, 0.999},  // group 0 again
      // The other rules in the same launch: SGD's first step (its counter at 0) starts the buffer
      // from the grad; RMSprop's momentum is group 2's beta1 word, cycled by its HELD node.
      {1, ElementType::kFloat32, kFlagMomentum | kFlagNesterov, 0.01, UpdateRuleKind::kSgd, 0.1},
      {2, ElementType::kBFloat16, kFlagMomentum | kFlagCentered | kFlagMaximize, 0.1, UpdateRuleKind::kRmsprop, 0.9},
      {0, ElementType::kFloat16, 0, 0.01, UpdateRuleKind::kAdagrad, 0.01},
  };
  for (int b = 0; b < static_cast<int>(sizeof buckets / sizeof buckets[0]); ++b) {
    const BucketCase& c = buckets[b];
    BucketSpec spec{};
    spec.group = c.group;
    spec.rule = static_cast<int32_t>(c.rule);
    spec.momentum = 0.9;
    spec.decay = c.decay;
    spec.eps = 1e-8;
    spec.weight_decay = c.weight_decay;
    spec.flags = c.flags;
    spec.element_type = static_cast<int32_t>(c.type);
    BucketSpec host = spec, device = spec;
    host.step = &m.steps[b];
    device.step = m.steps_d + b;
    host.program = c.group >= 0 ? &m.words[c.group * kHeldWords] : m.cosine.data();
    device.program = c.group >= 0 ? m.words_d + c.group * kHeldWords : m.cosine_d;
    m.buckets_host.push_back(host);
    m.buckets_device.push_back(device);
  }
  // Sizes around the chunk and vector-step edges, several tensors a bucket, unaligned ones.
  struct TensorCase {
    int bucket;
    int64_t numel;
    int offset;
  };
  const TensorCase tensors[] = {{0, 2 * kChunkSize + 17, 0},
                                {0, 2048, 0},
                                {1, kChunkSize, 0},
                                {1, 3001, 1},
                                {2, kChunkSize + 2048 * 3, 0},
                                {2, 999, 3},
                                {3, 1, 0},
                                {3, 5 * 2048 + 5, 0},
                                {4, kChunkSize - 1, 0},
                                {4, 4, 2},
                                {0, 7, 1},
                                {5, kChunkSize + 5, 0},
                                {5, 3001, 1},
                                {6, 4103, 0},
                                {6, 100, 2},
                                {7, 5000, 0}};
  for (const TensorCase& c : tensors) {
    Tensor t;
    t.bucket = c.bucket;
    t.type = static_cast<ElementType>(m.buckets_host[c.bucket].element_type);
    t.numel = c.numel;
    t.offset = c.offset;
    const BucketSpec& spec = m.buckets_host[c.bucket];
    const auto rule = static_cast<UpdateRuleKind>(spec.rule);
    for (int k = 0; k < kMaxStates; ++k) t.has[k] = rule_has_state(rule, spec.flags, k);
    randomize(t, kParam, 1.0f, false);
    randomize(t, kGrad, 4.0f, false);
    if (rule == UpdateRuleKind::kAdam) {
      randomize(t, kExpAvg, 0.1f, false);
      randomize(t, kExpAvgSq, 0.01f, true);
      if (t.has[2]) randomize(t, kMaxExpAvgSq, 0.02f, true);
    } else {
      // Sums of squares positive, a running mean small beside them (RMSprop's centered variance).
      const bool squares = rule != UpdateRuleKind::kSgd;
      if (t.has[0]) randomize(t, kExpAvg, squares ? 1.0f : 0.1f, squares);
      if (t.has[1]) randomize(t, kExpAvgSq, 0.1f, false);
      if (t.has[2]) randomize(t, kMaxExpAvgSq, 0.01f, false);
    }
    for (int a = 0; a < kArrays; ++a) {
      if (!t.host[a].empty()) upload(t, a);
    }
    m.tensors.push_back(std::move(t));
  }
  return m;
}

// A table's memory for the project's table logic (csrc/cuda/tensor_tables.cu), from cudaMalloc;
// the test's few tables live until it exits.
class PlainMemory final : public TableMemory {
 public:
  explicit PlainMemory(size_t bytes) {
    CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&device_), bytes));
    CHECK_CUDA(cudaMallocHost(reinterpret_cast<void**>(&host_), bytes));
  }
  uint8_t* host() override { return host_; }
  uint8_t* device() override { return device_; }
  cudaError_t copy_eagerly(cudaStream_t stream, size_t bytes) override {
    return cudaMemcpyAsync(device_, host_, bytes, cudaMemcpyHostToDevice, stream);
  }
  void used_on(cudaStream_t) override {}

 private:
  uint8_t* device_ = nullptr;
  uint8_t* host_ = nullptr;
};

// A launch's table, as the extension builds it: the tensors (or none: a flush), their chunks,
// the buckets and a counter pair, through prepare_launch on the legacy stream.
LaunchTable make_table(TableSet& set, const Model& m, bool with_tensors) {
  std::vector<TensorEntry> entries;
  if (with_tensors) {
    for (const Tensor& t : m.tensors) {
      TensorEntry e{t.pointer(kParam),
                    t.pointer(kGrad),
                    t.pointer(kExpAvg),
                    t.pointer(kExpAvgSq),
                    t.pointer(kMaxExpAvgSq),
                    t.numel,
                    1,
                    t.bucket};
      const uintptr_t pack = static_cast<uintptr_t>(kPackElements * element_bytes(t.type));
      for (int a = 0; a < kArrays; ++a) {
        if (t.pointer(a) != nullptr && reinterpret_cast<uintptr_t>(t.pointer(a)) % pack != 0) e.aligned = 0;
      }
      entries.push_back(e);
    }
  }
  const AllocateTable allocate = [](size_t bytes) -> std::unique_ptr<TableMemory> {
    return std::make_unique<PlainMemory>(bytes);
  };
  LaunchTable table{};
  CHECK_CUDA(prepare_launch(set, m.buckets_device, entries, nullptr, allocate, &table));
  return table;
}

// `count` deferred steps from sequence number `first`, pointing at the host or the device model,
// then `writes` host writes (note [Host writes]) with sequence number `write_sequence`: group
// w % kGroups's lr for an even w, its beta1 for an odd one, values that differ from call to call.
DeferredSteps deferred_steps(Model& m, bool device, int count, int64_t first, int writes = 0,
                             int64_t write_sequence = 0, int call = 0) {
  DeferredSteps d{};
  d.write_count = writes;
  d.write_sequence = write_sequence;
  for (int w = 0; w < writes; ++w) {
    d.write_group[w] = w % Model::kGroups;
    d.write_word[w] = w % 2 == 0 ? kHeldLr : kHeldBeta1;
    d.write_value[w] = w % 2 == 0 ? 1e-3 * (w + 1) * call : 0.5 + 0.01 * w + 0.001 * call;
  }
  d.count = count;
  d.clock_count = 2;
  d.first_sequence = first;
  d.group_count = Model::kGroups;
  d.applied = device ? m.applied_d : &m.applied;
  d.words = device ? m.words_d : m.words.data();
  for (int i = 0; i < count; ++i) {
    d.rules[i] = device ? m.rules_d[i % 2] : m.rules[i % 2].data();
    d.clock_slot[i] = i % 2;
  }
  for (int c = 0; c < 2; ++c) d.clocks[c] = device ? m.clocks_d + c : &m.clocks[c];
  return d;
}

// The reference of one call on the host model: every bucket's scalars from the words before the
// call, the elements, then the writer's part (steps, HELD words, clocks and `applied`).
void reference_call(Model& m, const DeferredSteps& d, bool unscale, bool amp_skip, bool elements) {
  std::vector<StepScalars> scalars;
  for (const BucketSpec& b : m.buckets_host) scalars.push_back(bucket_scalars(b, d));
  for (Tensor& t : m.tensors) {
    const BucketSpec& b = m.buckets_host[t.bucket];
    const StepScalars& s = scalars[t.bucket];
    if (!elements || amp_skip || !s.usable) continue;
    const bool maximize = (b.flags & kFlagMaximize) != 0, decay = b.weight_decay != 0.0;
    const AdamScalars<float> narrow = scalars_as<float>(s.scalars);
    const auto rule = static_cast<UpdateRuleKind>(b.rule);
    for (int64_t j = t.offset; j < t.numel + t.offset; ++j) {
      float p = load(t.type, t.host[kParam].data(), j), g = load(t.type, t.host[kGrad].data(), j);
      float st[kMaxStates] = {0.0f, 0.0f, 0.0f};
      for (int k = 0; k < kMaxStates; ++k) {
        if (t.has[k]) st[k] = load(t.type, t.host[kExpAvg + k].data(), j);
      }
      float &mm = st[0], &v = st[1], &x = st[2];
      if (unscale) {
        g = g / 256.0f;
        store(t.type, t.host[kGrad].data(), j, g);
      }
      const bool momentum = (b.flags & kFlagMomentum) != 0, centered = (b.flags & kFlagCentered) != 0;
      if (rule == UpdateRuleKind::kSgd) {
        const SgdScalars<float> n = scalars_as<float>(s.sgd);
        if ((b.flags & kFlagNesterov) != 0) {
          sgd_update<float, float, true, true>(p, g, mm, n, maximize, decay, s.first_step);
        } else {
          sgd_update<float, float, true, false>(p, g, mm, n, maximize, decay, s.first_step);
        }
      } else if (rule == UpdateRuleKind::kRmsprop) {
        const RmspropScalars<float> n = scalars_as<float>(s.rmsprop);
        if (centered && momentum) rmsprop_update<float, float, true, true>(p, g, mm, v, x, n, maximize, decay);
        if (centered && !momentum) rmsprop_update<float, float, true, false>(p, g, mm, v, x, n, maximize, decay);
        if (!centered && momentum) rmsprop_update<float, float, false, true>(p, g, mm, v, x, n, maximize, decay);
        if (!centered && !momentum) rmsprop_update<float, float, false, false>(p, g, mm, v, x, n, maximize, decay);
      } else if (rule == UpdateRuleKind::kAdagrad) {
        adagrad_update<float, float>(p, g, mm, scalars_as<float>(s.adagrad), maximize, decay);
      } else {
        switch (b.flags & (kFlagAmsgrad | kFlagDecoupled)) {
          case 0: adam_update<float, float, false, false>(p, g, mm, v, x, narrow, maximize, decay); break;
          case kFlagDecoupled: adam_update<float, float, false, true>(p, g, mm, v, x, narrow, maximize, decay); break;
          case kFlagAmsgrad: adam_update<float, float, true, false>(p, g, mm, v, x, narrow, maximize, decay); break;
          default: adam_update<float, float, true, true>(p, g, mm, v, x, narrow, maximize, decay); break;
        }
      }
      store(t.type, t.host[kParam].data(), j, p);
      for (int k = 0; k < kMaxStates; ++k) {
        if (t.has[k]) store(t.type, t.host[kExpAvg + k].data(), j, st[k]);
      }
    }
  }
  if (!amp_skip) {
    for (size_t b = 0; b < scalars.size(); ++b) {
      if (scalars[b].usable) {
        ++*m.buckets_host[b].step;
      } else {
        ++m.invalid;
      }
    }
  }
  if (moves_words(d)) {
    std::vector<HeldValue> held;
    for (int64_t g = 0; g < Model::kGroups; ++g) held.push_back(held_after(d, g));
    for (int64_t g = 0; g < Model::kGroups; ++g) {
      m.words[g * kHeldWords + kHeldLr] = held[g].lr;
      m.words[g * kHeldWords + kHeldBeta1] = held[g].beta1;
    }
  }
  commit_clocks(d);
}

int64_t differing_elements(const Model& m) {
  int64_t bad = 0;
  for (const Tensor& t : m.tensors) {
    const int bytes = element_bytes(t.type);
    for (int a = 0; a < kArrays; ++a) {
      if (t.host[a].empty()) continue;
      const std::vector<unsigned char> device = host_copy(t.device[a], t.host[a].size());
      for (size_t e = static_cast<size_t>(t.offset) * bytes; e < device.size(); e += bytes) {
        bad += std::memcmp(&device[e], &t.host[a][e], bytes) != 0 ? 1 : 0;
      }
    }
  }
  return bad;
}

template <typename T>
bool same_words(const std::vector<T>& host, const T* device) {
  const std::vector<T> copy = host_copy(device, host.size());
  return std::memcmp(copy.data(), host.data(), host.size() * sizeof(T)) == 0;
}

struct Call {
  const char* what;
  int blocks;
  int deferred;      // deferred steps the call carries
  int64_t replayed;  // of which this many were applied already (their sequence numbers repeat)
  bool amp;          // grad_scale and found_inf given
  bool overflow;     // found_inf set: the step is skipped
  bool flush;        // no tensors
  bool unusable;     // group 2's lr is NaN from this call on
  int writes;        // host writes the call carries, after its deferred steps
  bool writes_done;  // ... already applied (a replayed graph's): skipped
};

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: nothing run\n");
    return 77;
  }
  lcg_state = 4242;
  Model m = make_model();
  TableSet tensors_set, flush_set;
  const LaunchTable with_tensors = make_table(tensors_set, m, true);
  const LaunchTable flush = make_table(flush_set, m, false);
  const Call calls[] = {
      {"1 block, no deferred step", 1, 0, 0, false, false, false, false, 0, false},
      {"3 blocks (fewer than chunks), 2 deferred steps", 3, 2, 0, false, false, false, false, 0, false},
      {"64 blocks (more than chunks), 1 deferred step", 64, 1, 0, false, false, false, false, 0, false},
      {"5 blocks, the last 2 deferred steps again (already applied: skipped)", 5, 2, 2, false, false, false, false, 0,
       false},
      {"7 blocks, 3 deferred steps of which 1 already applied", 7, 3, 1, false, false, false, false, 0, false},
      {"AMP unscale, 9 blocks, 1 deferred step", 9, 1, 0, true, false, false, false, 0, false},
      {"AMP overflow: skipped, its 2 deferred steps still applied", 4, 2, 0, true, true, false, false, 0, false},
      {"no chunk: a flush of 2 deferred steps, 1 block", 1, 2, 0, false, false, true, false, 0, false},
      {"group 2's lr NaN: its bucket skipped and counted, the others step", 6, 0, 0, false, false, false, true, 0,
       false},
      {"group 2 NaN, 8 deferred steps (the most), 33 blocks", 33, kMaxDeferredSteps, 0, false, false, false, true, 0,
       false},
      {"300 blocks, 1 deferred step", 300, 1, 0, false, false, false, false, 0, false},
      {"2 deferred steps, then 4 host writes, 5 blocks", 5, 2, 0, false, false, false, false, 4, false},
      {"no chunk: a flush of host writes only, 1 block", 1, 0, 0, false, false, true, false, 3, false},
      {"host writes already applied (a replayed graph): skipped", 4, 0, 0, false, false, false, false, 2, true},
      {"AMP overflow: skipped, its deferred step and host write still land", 4, 1, 0, true, true, false, false, 1,
       false},
      {"the most host writes, 12 blocks", 12, 1, 0, false, false, false, false, kMaxHostWrites, false},
  };
  int64_t issued = 0;  // deferred steps issued so far
  int number = 0;
  for (const Call& c : calls) {
    const std::string label = std::to_string(++number) + ". " + c.what;
    if (c.unusable) {
      const double nan = std::nan("");
      m.words[2 * kHeldWords + kHeldLr] = nan;
      CHECK_CUDA(cudaMemcpy(m.words_d + 2 * kHeldWords + kHeldLr, &nan, sizeof nan, cudaMemcpyHostToDevice));
    }
    const float found_inf = c.overflow ? 1.0f : 0.0f;
    CHECK_CUDA(cudaMemcpy(m.found_inf_d, &found_inf, sizeof found_inf, cudaMemcpyHostToDevice));
    const int64_t first = issued - c.replayed;
    const LaunchTable& table = c.flush ? flush : with_tensors;
    LaunchArgs args{};
    args.tensors = table.tensors;
    args.tasks = table.tasks;
    args.buckets = table.buckets;
    args.num_tasks = table.num_tasks;
    args.num_buckets = static_cast<int32_t>(m.buckets_device.size());
    // A batch of writes comes after the call's deferred steps; a replayed one is below `applied`.
    const int64_t write_sequence = c.writes_done ? m.applied - 1 : first + c.deferred;
    args.deferred = deferred_steps(m, true, c.deferred, first, c.writes, write_sequence, number);
    args.grad_scale = c.amp ? m.scale_d : nullptr;
    args.found_inf = c.amp ? m.found_inf_d : nullptr;
    args.invalid_steps = m.invalid_d;
    args.counters = table.counters;
    CHECK_CUDA(launch_adam_step(args, c.blocks, nullptr));
    CHECK_CUDA(cudaDeviceSynchronize());
    // A flush names no tensor but every bucket: the writer still advances their step counters.
    reference_call(m, deferred_steps(m, false, c.deferred, first, c.writes, write_sequence, number), c.amp, c.overflow,
                   !c.flush);
    issued = std::max(issued, first + c.deferred + (c.writes > 0 && !c.writes_done ? 1 : 0));

    const int64_t bad = differing_elements(m);
    expect(bad == 0, label + ": " + std::to_string(bad) + " elements differ from the reference");
    expect(same_words(m.steps, m.steps_d), label + ": step counters");
    expect(same_words(m.clocks, m.clocks_d), label + ": scheduler clocks");
    expect(same_words(m.words, m.words_d), label + ": HELD lr and beta1 words");
    expect(host_copy(m.applied_d, 1)[0] == m.applied, label + ": applied");
    expect(host_copy(m.invalid_d, 1)[0] == m.invalid, label + ": invalid_steps");
    const LaunchCounters counters = host_copy(table.counters, 1)[0];
    expect(counters.blocks_done == 0 && counters.next_task == 0, label + ": launch counters back at zero");
    // New grads, as training would have.
    for (Tensor& t : m.tensors) {
      randomize(t, kGrad, c.amp ? 256.0f : 1.0f, false);
      upload(t, kGrad);
    }
  }
  // Group 2's words stay NaN from call 9 on (its rules chain on them) until call 12's host write
  // gives it a finite lr again: its two buckets are counted in calls 9, 10 and 11, once each, and the
  // model's count above was compared after every call.
  // The grid size is asked of the runtime once per device: the emulation's SM count changed
  // afterwards is not seen (on a GPU the count cannot change, and this part checks nothing new).
  const int resident = resident_blocks(0);
  expect(resident > 0, "resident_blocks(0) is positive");
  if (std::getenv("LRFUSED_EMU_SMS") != nullptr) {
    setenv("LRFUSED_EMU_SMS", std::to_string(std::atoi(std::getenv("LRFUSED_EMU_SMS")) * 3).c_str(), 1);
    expect(resident_blocks(0) == resident, "resident_blocks is cached per device, not asked at every step");
  }
  expect(m.invalid == 6, "the NaN group's two buckets counted once each in each of the last three calls, got " +
                             std::to_string(m.invalid));
  if (failures != 0) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all %d multi-bucket launches equal the reference\n", number);
  return 0;
}
