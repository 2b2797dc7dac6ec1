// Steps doing local work right now, in the whole process: kernels over workers' memory and the
// rule between them (CPU), or a GPU step being enqueued (which includes its waits in NCCL). A
// stop may end gstabd without waiting for steps blocked on other nodes (server.cc), but never in
// the middle of these: a CPU step cut between its rule and its scaling would be counted with its
// gradients half scaled. (Process-wide, as the exit it guards is the process's.)
#pragma once

#include <atomic>

namespace gstab {

class LocalWork {
 public:
  // Begins local work, unless Close() has succeeded: began() is false then, and the caller
  // does none (the process is about to end). Never blocks.
  LocalWork() : began_(Begin()) {}
  ~LocalWork() {
    if (began_) count_.fetch_sub(1);
  }
  LocalWork(const LocalWork&) = delete;
  LocalWork& operator=(const LocalWork&) = delete;

  bool began() const { return began_; }

  // True, and no local work may begin from then on, when none is in progress (or it is closed
  // already).
  static bool Close() {
    int idle = 0;
    return count_.compare_exchange_strong(idle, kClosed) || idle == kClosed;
  }

 private:
  static bool Begin() {
    for (int n = count_.load();;) {
      if (n & kClosed) return false;
      if (count_.compare_exchange_weak(n, n + 1)) return true;
    }
  }

  static constexpr int kClosed = 1 << 30;
  static inline std::atomic<int> count_{0};
  const bool began_;
};

}  // namespace gstab
