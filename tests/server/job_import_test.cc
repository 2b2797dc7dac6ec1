// An import into a CPU job while its local workers step: the step after the one it waited for
// waits for the import, so the import goes between the two (driven at the Job, with real shared
// memory, where no RPC delays the next step).
#include <unistd.h>

#include <thread>

#include "client_lib/arena.h"
#include "gtest/gtest.h"
#include "kernels/cpu_executor.h"
#include "server/job.h"
#include "server/registration.h"
#include "tests/server/cpu_worker.h"

namespace gstab {
namespace {

TEST(JobImportTest, TheNextStepWaitsForAnImportWaitingForTheStepBefore) {
  // Each round the race is the import's wake-up against rank 0's next step, sent at once.
  for (int round = 0; round < 20; ++round) {
    CpuExecutor executor(1);
    Job job("cpu-job", RuleParams{}, 2, &executor);
    CpuWorker w0, w1;
    ASSERT_TRUE(w0.Register(&job, 0).ok());
    ASSERT_TRUE(w1.Register(&job, 1).ok());
    v1::JobState state = job.ExportState();
    state.mutable_groups(0)->set_t(77);
    state.set_last_step(50);

    // Rank 0 arrives at step 1 and, once it is done, goes straight on to step 51.
    absl::Status first, next;
    std::thread rank0([&] {
      v1::StepResponse r;
      first = job.Step(0, 1, absl::Seconds(10), &r);
      next = job.Step(0, 51, absl::Seconds(10), &r);
    });
    v1::GetStatsResponse stats;
    do {
      absl::SleepFor(absl::Milliseconds(1));
      job.GetStats(&stats);
    } while (stats.arrived_local_ranks_size() != 1);
    // The import waits for step 1 (a bounded wait: one that lost the race to step 51 would wait
    // for rank 1's step 51 and give up).
    absl::Status import;
    std::thread importer([&] { import = job.ImportState(state, false, absl::Seconds(5)); });
    // Until the import waits for step 1.
    do {
      absl::SleepFor(absl::Milliseconds(1));
      job.GetStats(&stats);
    } while (stats.imports_waiting() != 1);
    v1::StepResponse r;
    ASSERT_TRUE(job.Step(1, 1, absl::Seconds(10), &r).ok());
    importer.join();
    ASSERT_TRUE(import.ok()) << "round " << round << ": " << import;
    ASSERT_TRUE(job.Step(1, 51, absl::Seconds(10), &r).ok());
    rank0.join();
    ASSERT_TRUE(first.ok()) << first;
    ASSERT_TRUE(next.ok()) << next;
    // Step 51 ran on the imported statistics.
    EXPECT_EQ(job.ExportState().groups(0).t(), 78u) << "round " << round;
  }
}

// Group `name`'s tensor of 64 floats, first in `order`, registered as local rank 0 of `job`.
absl::Status RegisterGroups(Job* job, const std::vector<std::string>& order, GradientArena* arena,
                            MappingRegistry* registry) {
  for (const std::string& name : order) arena->AddTensor(name, 64, DType::kFloat32, name);
  if (absl::Status s = arena->Allocate(); !s.ok()) return s;
  absl::StatusOr<RegistrationPlan> plan =
      ValidateRegistration(arena->RegistrationRequest(), RegistrationCaps{});
  if (!plan.ok()) return plan.status();
  absl::StatusOr<MappedRegistration> mapped = MapRegistration(*plan, registry, nullptr, getuid());
  if (!mapped.ok()) return mapped.status();
  v1::RegisterBuffersResponse response;
  return job->Register(0, *std::move(mapped), &response);
}

std::vector<std::string> GroupOrder(const Job& job) {
  std::vector<std::string> names;
  const v1::JobState state = job.ExportState();
  for (const v1::GroupState& g : state.groups()) names.push_back(g.name());
  return names;
}

// The first registration of a job orders its groups (an import before it had laid them out in
// the state's order); later ones, after every worker left (a GPU generation's end, or a new run
// of a job of one node, held), keep that order. (A job across nodes is ordered again at each
// rendezvous: e2e_multinode_groups_test.)
TEST(JobImportTest, TheFirstRegistrationOrdersTheGroupsAndLaterOnesKeepIt) {
  CpuExecutor executor(1);
  Job job("ordered", RuleParams{}, 1, &executor);
  v1::JobState state = job.ExportState();
  for (const char* name : {"c", "a"}) state.add_groups()->set_name(name);
  ASSERT_TRUE(job.ImportState(state, false).ok());
  EXPECT_EQ(GroupOrder(job), (std::vector<std::string>{"c", "a"}));
  GradientArena first, second;
  MappingRegistry registry;
  ASSERT_TRUE(RegisterGroups(&job, {"a", "b", "c"}, &first, &registry).ok());
  EXPECT_EQ(GroupOrder(job), (std::vector<std::string>{"a", "b", "c"}));
  job.RemoveWorker(0);
  ASSERT_TRUE(RegisterGroups(&job, {"c", "b", "a"}, &second, &registry).ok());
  EXPECT_EQ(GroupOrder(job), (std::vector<std::string>{"a", "b", "c"}));
}

}  // namespace
}  // namespace gstab
