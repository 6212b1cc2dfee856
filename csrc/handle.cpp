// Per-bucket handles (see note [Bucket handles] in handle.h).
#include "handle.h"

#include <atomic>
#include <mutex>
#include <unordered_map>

namespace lrfused {
namespace {

struct Registry {
  std::mutex mutex;
  std::unordered_map<int64_t, std::shared_ptr<void>> states;
};

Registry& registry() {
  static auto* instance = new Registry();  // never destroyed: handles may die after static teardown
  return *instance;
}

void release(void* data) {
  auto* id = static_cast<int64_t*>(data);
  std::shared_ptr<void> released;  // destroyed outside the lock
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    auto it = r.states.find(*id);
    if (it != r.states.end()) {
      released = std::move(it->second);
      r.states.erase(it);
    }
  }
  delete id;
}

}  // namespace

at::Tensor new_handle() {
  static std::atomic<int64_t> next_id{1};
  auto* id = new int64_t(next_id.fetch_add(1));
  return at::from_blob(id, {1}, &release, at::TensorOptions().dtype(at::kLong));
}

std::shared_ptr<void> handle_state(const at::Tensor& handle, const std::function<std::shared_ptr<void>()>& make) {
  TORCH_CHECK(handle.device().is_cpu() && handle.scalar_type() == at::kLong && handle.numel() == 1,
              "lrfused: a handle must be the one-element int64 CPU tensor of lrfused::new_handle(), got ",
              handle.scalar_type(), " on ", handle.device(), " with ", handle.numel(), " elements");
  const int64_t id = handle.data_ptr<int64_t>()[0];
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::shared_ptr<void>& state = r.states[id];
  if (!state) state = make();
  return state;
}

}  // namespace lrfused
