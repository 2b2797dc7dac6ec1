// Steps doing local work right now, in the whole process: kernels over workers' memory and the
// rule between them (CPU), or a GPU step being enqueued. A stop may end gstabd without waiting
// for steps blocked on other nodes (server.cc), but never in the middle of these: a step cut
// between its rule and its scaling would be counted with its gradients half scaled.
#pragma once

#include <atomic>
#include <chrono>
#include <thread>

namespace gstab {

class LocalWork {
 public:
  // Once Close() has succeeded, a step that would begin local work waits instead: the process
  // is about to end.
  LocalWork() {
    for (int n = count_.load();;) {
      if (n & kClosed) {
        std::this_thread::sleep_for(std::chrono::hours(1));
        n = count_.load();
      } else if (count_.compare_exchange_weak(n, n + 1)) {
        return;
      }
    }
  }
  ~LocalWork() { count_.fetch_sub(1); }
  LocalWork(const LocalWork&) = delete;
  LocalWork& operator=(const LocalWork&) = delete;

  // True, and no local work may begin from then on, when none is in progress.
  static bool Close() {
    int idle = 0;
    return count_.compare_exchange_strong(idle, kClosed);
  }

 private:
  static constexpr int kClosed = 1 << 30;
  static inline std::atomic<int> count_{0};
};

}  // namespace gstab
