#include "kernels/cpu_executor.h"

#include <algorithm>

namespace gstab {

CpuExecutor::CpuExecutor(int num_threads) {
  if (num_threads < 2) return;
  for (int i = 0; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

CpuExecutor::~CpuExecutor() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  for (std::thread& t : workers_) t.join();
}

void CpuExecutor::ParallelFor(int64_t n, int max_threads, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  const int threads = static_cast<int>(std::min<int64_t>({max_threads, num_threads(), n}));
  if (threads <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  const bool caller_waits = n / threads >= kCallerWaitsFrom;
  absl::MutexLock run_lock(&run_mu_);
  uint64_t generation;
  {
    absl::MutexLock lock(&mu_);
    job_ = Job{&fn, n, 0, 0, caller_waits ? threads : threads - 1};
    generation = ++generation_;
  }
  if (!caller_waits) Drain(generation);
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](Job* job) { return job->finished == job->n; }, &job_));
  job_.fn = nullptr;
}

void CpuExecutor::Drain(uint64_t generation) {
  for (;;) {
    int64_t i;
    const std::function<void(int64_t)>* fn;
    {
      absl::MutexLock lock(&mu_);
      if (generation_ != generation || job_.fn == nullptr || job_.next >= job_.n) return;
      i = job_.next++;
      fn = job_.fn;
    }
    (*fn)(i);
    absl::MutexLock lock(&mu_);
    ++job_.finished;
  }
}

void CpuExecutor::WorkerLoop() {
  uint64_t seen = 0;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || (generation_ != seen && job_.helpers > 0);
      };
      mu_.Await(absl::Condition(&ready));
      if (stop_) return;
      seen = generation_;
      --job_.helpers;
    }
    Drain(seen);
  }
}

}  // namespace gstab
