// Which job holds which registered memory, over every job of a gstabd: a job's gradients are its
// own. Another job's steps would scale them too, each job's statistics then taking the other's
// scaled gradients. Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace gstab {

class MemoryClaims {
 public:
  // [begin, end) in gstabd's own address space, where the same memory has one address: gstabd
  // maps each shared-memory object and opens each CUDA IPC allocation once.
  struct Extent {
    uintptr_t begin = 0;
    uintptr_t end = 0;
  };

  // Holds `extents` for job `job` while the returned claim lives (a registration's; it may
  // outlive this object). A job's claims may overlap each other (its local ranks' are checked
  // apart, and a registration replacing another holds the same memory for a while).
  // FAILED_PRECONDITION when one overlaps memory another job holds, naming it (`what(i)`:
  // extent i, "tensor 3 ('w')") and that job.
  absl::StatusOr<std::shared_ptr<void>> Claim(const std::string& job,
                                              const std::vector<Extent>& extents,
                                              const std::function<std::string(size_t)>& what);

 private:
  struct Held {
    uintptr_t end;
    std::string job;
    uint64_t claim;  // which Claim, to let go of its extents alone
  };
  struct State {
    absl::Mutex mu;
    std::multimap<uintptr_t, Held> held ABSL_GUARDED_BY(mu);  // by begin
    uint64_t claims ABSL_GUARDED_BY(mu) = 0;
  };
  static void Release(State* state, uint64_t claim, const std::vector<Extent>& extents);
  static absl::Status Refusal(const std::string& job, const std::string& holder,
                              const std::string& what);

  const std::shared_ptr<State> state_ = std::make_shared<State>();
};

}  // namespace gstab
