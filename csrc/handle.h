// Per-bucket handles: what a backend keeps for one bucket of an optimizer (the CUDA tables) lives
// exactly as long as the bucket does.
//
// note [Bucket handles]
// The Python bucket holds a handle, a one-element int64 CPU tensor made by new_handle(). Its
// storage is owned by a deleter that, when Python frees the tensor, releases every state kept
// under the handle's id. A state is created on first use (handle_state). A copy of the tensor
// (deepcopy, pickling) carries the id but not the deleter: it finds the same state while the
// original lives and a fresh one after, so it stays correct, and only the original releases.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>

namespace lrfused {

at::Tensor new_handle();

// The state kept under `handle`, made by `make` if there is none yet.
std::shared_ptr<void> handle_state(const at::Tensor& handle, const std::function<std::shared_ptr<void>()>& make);

template <typename T>
std::shared_ptr<T> handle_state(const at::Tensor& handle) {
  return std::static_pointer_cast<T>(
      handle_state(handle, [] { return std::static_pointer_cast<void>(std::make_shared<T>()); }));
}

}  // namespace lrfused
