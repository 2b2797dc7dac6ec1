// A worker for end-to-end tests: a Client attached to a job, with a gradient arena of mixed
// dtypes and norm groups, deterministic gradients, and the reference result the core and CPU
// kernels give for the same gradients.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client_lib/client.h"
#include "core/rule_types.h"

namespace gstab::testing {

// Attach options for job `name` (rank 0 of 1), with `config` (empty: the daemon's defaults).
AttachOptions JobOptions(const std::string& name, v1::PolicyConfig config = {});

// Blocks until `client`'s job has a step waiting for local workers, with exactly `ranks`
// arrived (GetStatsResponse.arrived_local_ranks); false after 10 s.
bool WaitForArrivals(Client* client, const std::vector<uint32_t>& ranks);

// gstabd's answer to a Step of step `step` under session `token`, as any client could send it.
absl::Status StepWithToken(Client* client, const std::string& token, uint64_t step = 1);

class TestWorker;
// Steps 1 to `steps` of `worker`'s job, each with a NaN gradient: one SKIP event each, more
// than a subscriber that does not read can take in. An error names the first step not skipped.
absl::Status StepNonFinite(TestWorker& worker, uint64_t steps);

class TestWorker {
 public:
  // Attaches to `job` and registers the standard layout: tensors a (fp32, group g),
  // b (bf16, group g), c (fp16, its own group), d (fp32, 70001 elements, group big).
  static absl::StatusOr<std::unique_ptr<TestWorker>> Create(const std::string& socket,
                                                            const AttachOptions& options);

  // Writes deterministic gradients for `step` (scaled by `factor`).
  void Fill(uint64_t step, uint32_t seed, float factor = 1.0f);
  std::vector<unsigned char> Bytes() const;

  Client& client() { return *client_; }
  GradientArena& arena() { return arena_; }
  const GradientArena& arena() const { return arena_; }

 private:
  std::unique_ptr<Client> client_;
  GradientArena arena_;
};

// What gstabd must produce for one step of a TestWorker layout: the rule applied to the
// kernels' sums per group, and the gradient bytes after scaling.
struct ReferenceStep {
  std::vector<StepOutcome> outcomes;  // groups in order g, c, big
  std::vector<unsigned char> bytes;
};

// Per-group sums of squares (groups g, c, big) of `worker`'s current gradients.
std::vector<double> GroupSums(const TestWorker& worker);
// `bytes` (a copy of `worker`'s gradients) scaled by the CPU kernels with the group scales of
// `response`, as gstabd applies them: what the worker's gradients must be after that step
// when `bytes` were its gradients before it.
std::vector<unsigned char> ScaledBytes(const TestWorker& worker, std::vector<unsigned char> bytes,
                                       const v1::StepResponse& response);

class Reference {
 public:
  explicit Reference(const RuleParams& params) : params_(params) {}
  // Runs one step over a copy of `worker`'s current gradients.
  ReferenceStep Step(const TestWorker& worker);
  // As gstabd: the stabilizer's EMAs are re-expressed for new betas (RescaleStabilizerEmas).
  void set_params(const RuleParams& params);

 private:
  RuleParams params_;
  std::vector<GroupStats> stats_ = std::vector<GroupStats>(3);
};

}  // namespace gstab::testing
