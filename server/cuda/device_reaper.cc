#include "server/cuda/device_reaper.h"

#include <algorithm>
#include <cstdint>
#include <deque>
#include <map>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace gstab {
namespace {

// Runs deferred work on one background thread, in order; or, `parallel`, each on a thread of
// its own (one that blocks holds up no other).
class Reaper {
 public:
  explicit Reaper(bool parallel) : parallel_(parallel) {
    if (!parallel_) std::thread([this] { Run(); }).detach();
  }

  void Defer(std::function<void()> work) {
    absl::MutexLock lock(&mu_);
    ++deferred_;
    if (parallel_) {
      std::thread([this, work = std::move(work)] {
        work();
        absl::MutexLock done(&mu_);
        ++ran_;
      }).detach();
      return;
    }
    queue_.push_back(std::move(work));
  }

  // Waits until the work deferred so far has run (in parallel mode, until nothing is left
  // running: those threads finish in any order).
  bool Flush(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    const uint64_t target = deferred_;
    auto done = [this, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return parallel_ ? ran_ == deferred_ : ran_ >= target;
    };
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

  const bool parallel_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t deferred_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t ran_ ABSL_GUARDED_BY(mu_) = 0;
};

// Never destroyed: their threads run for the life of the process.
class DeviceReapers {
 public:
  Reaper& For(int device) {
    absl::MutexLock lock(&mu_);
    Reaper*& reaper = reapers_[device];
    if (reaper == nullptr) reaper = new Reaper(/*parallel=*/false);
    return *reaper;
  }

  // Waits for every device's reaper until `deadline` (they drain meanwhile, side by side).
  bool Flush(absl::Time deadline) {
    std::vector<Reaper*> reapers;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [device, reaper] : reapers_) reapers.push_back(reaper);
    }
    bool all = true;
    for (Reaper* reaper : reapers) {
      all = reaper->Flush(std::max(deadline - absl::Now(), absl::ZeroDuration())) && all;
    }
    return all;
  }

 private:
  absl::Mutex mu_;
  std::map<int, Reaper*> reapers_ ABSL_GUARDED_BY(mu_);
};
DeviceReapers& TheReapers() {
  static DeviceReapers* reapers = new DeviceReapers;
  return *reapers;
}
Reaper& TheAborter() {
  static Reaper* aborter = new Reaper(/*parallel=*/true);
  return *aborter;
}

}  // namespace

void DeferDeviceRelease(int device, std::function<void()> release) {
  TheReapers().For(device).Defer(std::move(release));
}

void DeferCommunicatorAbort(std::function<void()> abort) { TheAborter().Defer(std::move(abort)); }

bool FlushDeviceReleases(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  auto left = [deadline] { return std::max(deadline - absl::Now(), absl::ZeroDuration()); };
  // Aborts first (a release may wait for one), then releases, then the aborts those deferred
  // (a communicator destroyed on the reaper may abort instead).
  const bool aborted = TheAborter().Flush(left());
  const bool released = TheReapers().Flush(deadline);
  return TheAborter().Flush(left()) && aborted && released;
}

}  // namespace gstab
