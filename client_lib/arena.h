// A host gradient arena: one POSIX shared-memory object holding a worker's gradients, laid out
// tensor by tensor (64-byte aligned), ready to register with gstabd.
//
//   GradientArena arena;
//   arena.AddTensor("fc1.weight", 4096, DType::kFloat32);      // group: its own
//   arena.AddTensor("fc1.bias", 64, DType::kFloat32, "fc1");   // explicit group
//   GSTAB_CHECK_OK(arena.Allocate());
//   float* g = static_cast<float*>(arena.data(0));
//
// Cleanup: the shared object is unlinked when the arena is destroyed; objects left behind by a
// crashed process are removed by the next arena allocated in the same pid namespace (by a
// process allowed to unlink them), and by gstabd when the crashed worker's session expires. Not
// thread-safe; the memory itself may be written by any thread.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gstab/v1/stabilizer.pb.h"
#include "kernels/dtype.h"

namespace gstab {

class GradientArena {
 public:
  GradientArena() = default;
  ~GradientArena();
  GradientArena(const GradientArena&) = delete;
  GradientArena& operator=(const GradientArena&) = delete;

  // Adds a tensor before Allocate(); returns its index. The layout is fixed once allocated: a
  // later tensor is not added (kNotAdded; the C ABI refuses it with a message). An empty group
  // means a group of its own. `reduction`: how its group's norm combines the ranks' gradients
  // (gstab/v1/stabilizer.proto).
  static constexpr size_t kNotAdded = ~size_t{0};
  size_t AddTensor(std::string name, uint64_t numel, DType dtype, std::string group = "",
                   v1::Reduction reduction = v1::REDUCTION_SHARDED);

  // Creates and maps the shared object ("/gstab-<pid namespace>-<pid>-<random>"), zero-filled, its
  // memory reserved now: RESOURCE_EXHAUSTED naming /dev/shm when it has no room (rather than a bus
  // error at the first write). INVALID_ARGUMENT when the tensors add up to more than 2^50 bytes.
  absl::Status Allocate();
  bool allocated() const { return base_ != nullptr; }

  // The tensor's memory; null before Allocate() has succeeded, and for an index that is not a
  // tensor's (kNotAdded included).
  void* data(size_t tensor) const;
  // 0 for an index that is not a tensor's.
  uint64_t numel(size_t tensor) const {
    return tensor < tensors_.size() ? tensors_[tensor].numel : 0;
  }
  size_t num_tensors() const { return tensors_.size(); }
  const std::string& shm_name() const { return name_; }
  // Removes the object's name now; the memory stays mapped and usable, but no registration can
  // find it any more. For a process on its way out whose arena outlives its exit (a framework's
  // tensors over it that are never freed). Idempotent; a forked child's copy does nothing.
  void Unlink();
  size_t size_bytes() const { return size_; }
  // The bytes the tensors span from the object's start (the progress word follows them).
  uint64_t tensor_bytes() const { return progress_offset_; }

  // The RegisterBuffers request describing this arena (one buffer per dtype, and the progress
  // word in the 64 bytes after the last tensor); session unset.
  v1::RegisterBuffersRequest RegistrationRequest() const;

 private:
  struct Entry {
    std::string name;
    std::string group;
    v1::Reduction reduction;
    uint64_t numel;
    DType dtype;
    uint64_t byte_offset = 0;
  };
  std::vector<Entry> tensors_;
  std::string name_;
  pid_t owner_ = 0;  // the process that created the object (the one that removes it)
  bool unlinked_ = false;
  unsigned char* base_ = nullptr;
  size_t size_ = 0;
  uint64_t progress_offset_ = 0;  // gstabd's progress word, past the tensors
};

}  // namespace gstab
