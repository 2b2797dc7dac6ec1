// A fixed pool of host threads for the CPU kernels. A loop that gets one thread (a pool of one, or
// a small loop) runs inline on its caller. A short loop runs on its caller and pool threads; a
// long one, of at least kCallerWaitsFrom indices a thread, on pool threads alone while its caller
// waits.
//
// Why the caller waits in long loops: in gstabd it is a gRPC handler thread, one of several that
// wake wherever the scheduler puts them, often on the CPU where a pool thread is about to run.
// The two then share that CPU for the whole loop (seen on a 2-CPU VM: a 64 MiB step's kernels
// took about 30% longer than the same loops called from a steady thread), while the pool's
// threads keep their CPUs from one loop to the next. In a short loop, the wake-up that a waiting
// caller costs weighs more (on that VM, tens of microseconds a loop). See bench/RESULTS.md,
// gstabd Step.
//
// Thread-safe: concurrent ParallelFor calls are serialised (one parallel loop at a time).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace gstab {

class CpuExecutor {
 public:
  // A loop of at least this many indices for each of its threads runs on pool threads alone.
  // The CPU kernels' index is a tile of 2^16 elements: 128 of them are 16 to 32 MiB a thread.
  static constexpr int64_t kCallerWaitsFrom = 128;

  // num_threads >= 2 starts that many threads; 1 (or less) starts none and runs every loop
  // inline.
  explicit CpuExecutor(int num_threads);
  // Not while a ParallelFor runs: its pool threads stop, and a caller waiting for them with it.
  ~CpuExecutor();
  CpuExecutor(const CpuExecutor&) = delete;
  CpuExecutor& operator=(const CpuExecutor&) = delete;

  int num_threads() const { return std::max(1, static_cast<int>(workers_.size())); }

  // Runs fn(i) for every i in [0, n) on at most max_threads threads and returns when all are
  // done. Indices are handed out dynamically; fn must not depend on which thread runs it.
  // Blocks the caller: one loop at a time.
  void ParallelFor(int64_t n, int max_threads, const std::function<void(int64_t)>& fn);

 private:
  struct Job {
    const std::function<void(int64_t)>* fn = nullptr;
    int64_t n = 0;
    int64_t next = 0;      // next index to hand out
    int64_t finished = 0;  // indices completed
    int helpers = 0;       // pool threads still allowed to join
  };

  void WorkerLoop();
  // Runs indices of loop `generation` until none are left (or a next loop has begun: a thread
  // still here from the last loop does not join the next uncounted).
  void Drain(uint64_t generation) ABSL_LOCKS_EXCLUDED(mu_);

  absl::Mutex run_mu_;  // serialises ParallelFor calls
  absl::Mutex mu_;
  Job job_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace gstab
