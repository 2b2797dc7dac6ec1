// A fixed pool of host threads for the CPU kernels. The caller of ParallelFor takes part in the
// work, so a pool of one thread runs everything inline.
//
// Thread-safe: concurrent ParallelFor calls are serialised (one parallel loop at a time).
#pragma once

#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace gstab {

class CpuExecutor {
 public:
  // num_threads >= 1 counts the calling thread; num_threads - 1 workers are started.
  explicit CpuExecutor(int num_threads);
  ~CpuExecutor();
  CpuExecutor(const CpuExecutor&) = delete;
  CpuExecutor& operator=(const CpuExecutor&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(i) for every i in [0, n) on at most max_threads threads and returns when all are
  // done. Indices are handed out dynamically; fn must not depend on which thread runs it.
  void ParallelFor(int64_t n, int max_threads, const std::function<void(int64_t)>& fn);

 private:
  struct Job {
    const std::function<void(int64_t)>* fn = nullptr;
    int64_t n = 0;
    int64_t next = 0;      // next index to hand out
    int64_t finished = 0;  // indices completed
    int helpers = 0;       // workers allowed to join
  };

  void WorkerLoop();
  // Runs indices of the current job until none are left.
  void Drain() ABSL_LOCKS_EXCLUDED(mu_);

  absl::Mutex run_mu_;  // serialises ParallelFor calls
  absl::Mutex mu_;
  Job job_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace gstab
