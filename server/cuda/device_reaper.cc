#include "server/cuda/device_reaper.h"

#include <cstdint>
#include <deque>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace gstab {
namespace {

class Reaper {
 public:
  Reaper() {
    std::thread([this] { Run(); }).detach();
  }

  void Defer(std::function<void()> release) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(release));
    ++deferred_;
  }

  bool Flush(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    const uint64_t target = deferred_;
    auto done = [this, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return ran_ >= target; };
    return mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  }

 private:
  void Run() {
    for (;;) {
      std::function<void()> release;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](std::deque<std::function<void()>>* q) { return !q->empty(); }, &queue_));
        release = std::move(queue_.front());
        queue_.pop_front();
      }
      release();
      absl::MutexLock lock(&mu_);
      ++ran_;
    }
  }

  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t deferred_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t ran_ ABSL_GUARDED_BY(mu_) = 0;
};

// Never destroyed: its thread runs for the life of the process.
Reaper& TheReaper() {
  static Reaper* reaper = new Reaper;
  return *reaper;
}

}  // namespace

void DeferDeviceRelease(std::function<void()> release) { TheReaper().Defer(std::move(release)); }

bool FlushDeviceReleases(absl::Duration timeout) { return TheReaper().Flush(timeout); }

}  // namespace gstab
