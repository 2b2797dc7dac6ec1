// A CPU job's rounds as sessions of a rank come and go: a Step is its own session's, on its own
// session's registration, and a rank is taken for detached only by its own session's leaving
// (driven at the Job, where no RPC orders the calls).
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "kernels/cpu_executor.h"
#include "server/collective.h"
#include "server/job.h"
#include "tests/server/cpu_worker.h"

namespace gstab {
namespace {

// Until `n` local ranks wait in the open round.
void AwaitArrivals(const Job& job, int n) {
  v1::GetStatsResponse stats;
  do {
    absl::SleepFor(absl::Milliseconds(1));
    job.GetStats(&stats);
  } while (stats.arrived_local_ranks_size() != n);
}

// A restarted worker's new session may step before the old session's removal reaches the job:
// it is told to register, rather than join the round on the old registration (which the removal
// would take out of the round, leaving its gradients unscaled under an OK).
TEST(JobSessionsTest, ASessionStepsOnItsOwnRegistrationOnly) {
  CpuExecutor executor(1);
  Job job("restarted", RuleParams{}, 1, &executor);
  CpuWorker old_worker;
  ASSERT_TRUE(old_worker.Register(&job, 0, /*session=*/1).ok());
  v1::StepResponse r;
  const absl::Status early = job.Step(0, 1, absl::Seconds(10), &r, 0, /*session=*/2);
  EXPECT_TRUE(absl::IsFailedPrecondition(early)) << early;
  EXPECT_TRUE(absl::StrContains(early.message(), "has no buffers")) << early;
  EXPECT_TRUE(job.Step(0, 1, absl::Seconds(10), &r, 0, /*session=*/1).ok());
  CpuWorker new_worker;
  ASSERT_TRUE(new_worker.Register(&job, 0, /*session=*/2).ok());
  EXPECT_TRUE(job.Step(0, 2, absl::Seconds(10), &r, 0, /*session=*/2).ok());
}

// A session's refused registration takes its waiting Step out of the round: that Step is
// answered then, naming why, not at its deadline as if its own rank had not come.
TEST(JobSessionsTest, AStepTakenBackByItsSessionsRefusedRegistrationIsAnsweredThen) {
  CpuExecutor executor(1);
  Job job("refused", RuleParams{}, 2, &executor);
  CpuWorker w0, w1;
  ASSERT_TRUE(w0.Register(&job, 0, /*session=*/1).ok());
  ASSERT_TRUE(w1.Register(&job, 1, /*session=*/2).ok());
  absl::Status waiting;
  std::thread rank0([&] {
    v1::StepResponse r;
    waiting = job.Step(0, 1, absl::Seconds(60), &r, 0, /*session=*/1);
  });
  AwaitArrivals(job, 1);
  const absl::Time dropped = absl::Now();
  job.DropRegistration(0, 1, absl::InvalidArgumentError("tensor 'w' is past its buffer"));
  rank0.join();
  EXPECT_LT(absl::Now() - dropped, absl::Seconds(30)) << "answered at its deadline";
  EXPECT_TRUE(absl::IsFailedPrecondition(waiting)) << waiting;
  EXPECT_TRUE(absl::StrContains(waiting.message(), "taken back")) << waiting;
  EXPECT_TRUE(absl::StrContains(waiting.message(), "past its buffer")) << waiting;
  v1::GetStatsResponse stats;
  job.GetStats(&stats);
  EXPECT_EQ(stats.arrived_local_ranks_size(), 0);
}

// A restarted worker's new session whose registration is refused before the old session's
// removal reaches the job: the old session's removal neither takes the refusal's reason away
// (the new session's Step names it) nor leaves the old session able to step.
TEST(JobSessionsTest, AnOlderSessionsRemovalKeepsANewerSessionsRefusal) {
  CpuExecutor executor(1);
  Job job("refused-then-removed", RuleParams{}, 1, &executor);
  CpuWorker old_worker;
  ASSERT_TRUE(old_worker.Register(&job, 0, /*session=*/1).ok());
  job.DropRegistration(0, /*session=*/2,
                       absl::InvalidArgumentError("tensor 'w' is past its buffer"));
  v1::StepResponse r;
  EXPECT_EQ(job.Step(0, 1, absl::Seconds(10), &r, 0, /*session=*/1).code(),
            absl::StatusCode::kUnauthenticated);
  job.RemoveWorker(0, /*gone=*/true, /*session=*/1);
  const absl::Status refused = job.Step(0, 1, absl::Seconds(10), &r, 0, /*session=*/2);
  EXPECT_TRUE(absl::IsFailedPrecondition(refused)) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "past its buffer")) << refused;
}

// The old session of a restarted rank detaching after the new one attached does not make the
// other ranks' Steps fail at once for that rank having left: they wait for its new worker.
// Its own detach, with no attach since, does.
TEST(JobSessionsTest, ADetachAfterTheRanksNextAttachIsNotALeaving) {
  CpuExecutor executor(1);
  Job job("detach-race", RuleParams{}, 2, &executor);
  CpuWorker w0, w1;
  const uint64_t first = job.WorkerAttached(0);
  ASSERT_TRUE(w0.Register(&job, 0, /*session=*/1).ok());
  job.WorkerAttached(1);
  ASSERT_TRUE(w1.Register(&job, 1, /*session=*/2).ok());
  job.WorkerAttached(0);  // rank 0's new worker (session 3), before its old one detaches
  job.RemoveWorker(0, /*gone=*/false, /*session=*/1, first);
  v1::StepResponse r;
  const absl::Status waited = job.Step(1, 1, absl::Milliseconds(300), &r, 0, /*session=*/2);
  EXPECT_TRUE(absl::IsDeadlineExceeded(waited)) << waited;
  EXPECT_TRUE(absl::StrContains(waited.message(), "did not call Step")) << waited;

  const uint64_t last = job.WorkerAttached(0);  // session 4, which then detaches
  job.RemoveWorker(0, /*gone=*/false, /*session=*/4, last);
  const absl::Status left = job.Step(1, 1, absl::Seconds(60), &r, 0, /*session=*/2);
  EXPECT_TRUE(absl::IsFailedPrecondition(left)) << left;
  EXPECT_TRUE(absl::StrContains(left.message(), "detached")) << left;
}

// A round that runs after one of its workers' calls gave up (gstabd frozen past the call's
// deadline: the worker's client took the step as lost, zeroed its gradients and went on) applies
// nothing: its gradients may be the next step's by now. The same step then runs as usual.
TEST(JobSessionsTest, ARoundAfterAWorkersCallGaveUpAppliesNothing) {
  CpuExecutor executor(1);
  Job job("gave-up", RuleParams{}, 2, &executor);
  CpuWorker w0, w1;
  ASSERT_TRUE(w0.Register(&job, 0).ok());
  ASSERT_TRUE(w1.Register(&job, 1).ok());
  const auto bytes = [](CpuWorker& w) {
    const auto* p = static_cast<const unsigned char*>(w.arena.data(0));
    return std::vector<unsigned char>(p, p + 1024 * sizeof(float));
  };
  const std::vector<unsigned char> before = bytes(w0);
  absl::Status given_up;
  std::thread rank0([&] {
    v1::StepResponse r;
    given_up = job.Step(0, 1, absl::Seconds(60), &r, 0, 0, absl::Now() + absl::Milliseconds(100));
  });
  AwaitArrivals(job, 1);
  absl::SleepFor(absl::Milliseconds(300));  // past rank 0's call deadline
  v1::StepResponse r;
  const absl::Status late = job.Step(1, 1, absl::Seconds(60), &r);
  rank0.join();
  for (const absl::Status& s : {given_up, late}) {
    EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "came after a worker's call of it gave up")) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "nothing was applied")) << s;
  }
  EXPECT_EQ(bytes(w0), before);
  v1::GetStatsResponse stats;
  job.GetStats(&stats);
  EXPECT_EQ(stats.groups(0).accepted_steps(), 0u);
  std::thread again([&] {
    v1::StepResponse r0;
    EXPECT_TRUE(job.Step(0, 1, absl::Seconds(60), &r0).ok());
  });
  EXPECT_TRUE(job.Step(1, 1, absl::Seconds(60), &r).ok());
  again.join();
  EXPECT_NE(bytes(w0), before);  // scaled this time
}

// A collective whose every call waits until it is opened, then fails: a round held in its
// exchange with other nodes.
class Gate final : public Collective {
 public:
  uint32_t rank() const override { return 0; }
  uint32_t size() const override { return 2; }
  absl::Status AllReduceSum(absl::Span<double>, absl::Duration) override { return Wait(); }
  absl::Status AllReduceMax(absl::Span<double>, absl::Duration) override { return Wait(); }
  absl::Status Broadcast(absl::Span<char>, absl::Duration) override { return Wait(); }
  absl::Status AllGather(absl::Span<const char>, absl::Span<char>, absl::Duration) override {
    return Wait();
  }
  absl::StatusOr<std::vector<uint32_t>> MissingNodes(uint64_t, absl::Duration) override {
    return std::vector<uint32_t>{};
  }
  void Open() { open_.Notify(); }
  bool waited() const { return waited_.HasBeenNotified(); }

 private:
  absl::Status Wait() {
    if (!waited_.HasBeenNotified()) waited_.Notify();
    open_.WaitForNotification();
    return absl::UnavailableError("the gate's other node went");
  }
  absl::Notification open_, waited_;
};

// A worker that leaves while the round that took its Step still runs (its Step call gave up):
// AwaitRoundOf, which Detach calls before it answers, returns only once that round has ended,
// so gstabd does not scale memory the worker may reuse after its Detach.
TEST(JobSessionsTest, AwaitRoundOfALeavingRankWaitsForItsRunningRound) {
  CpuExecutor executor(1);
  Job job("leaving", RuleParams{}, 1, &executor);
  auto gate = std::make_shared<Gate>();
  job.SetCollective(gate, "token");
  CpuWorker w;
  ASSERT_TRUE(w.Register(&job, 0, /*session=*/1).ok());
  std::thread step([&] {
    v1::StepResponse r;
    (void)job.Step(0, 1, absl::Seconds(60), &r, 0, /*session=*/1);
  });
  while (!gate->waited()) absl::SleepFor(absl::Milliseconds(1));  // the round runs
  job.RemoveWorker(0, /*gone=*/false, /*session=*/1, std::nullopt, /*expired=*/false);
  std::atomic<bool> returned{false};
  std::thread detach([&] {
    job.AwaitRoundOf(0, absl::Seconds(60));
    returned = true;
  });
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_FALSE(returned.load()) << "returned while the round still ran";
  gate->Open();
  detach.join();
  step.join();
  EXPECT_TRUE(returned.load());
  job.AwaitRoundOf(0, absl::Seconds(60));  // no round: at once
}

// A round given up at its deadline (a local rank never came) tells the other nodes to skip
// its step with the job's lock released: an import meanwhile waits for that notice, for it would
// clear the refusal's step and let a retried Step of it in while the other nodes skip it.
TEST(JobSessionsTest, AnImportWaitsForAnAbandonedRoundsNoticeToTheOtherNodes) {
  CpuExecutor executor(1);
  Job job("abandoned", RuleParams{}, 2, &executor);
  auto gate = std::make_shared<Gate>();
  job.SetCollective(gate, "token");
  CpuWorker w0, w1;
  ASSERT_TRUE(w0.Register(&job, 0, /*session=*/1).ok());
  ASSERT_TRUE(w1.Register(&job, 1, /*session=*/2).ok());
  const v1::JobState state = job.ExportState();
  std::thread step([&] {
    v1::StepResponse r;
    (void)job.Step(0, 1, absl::Milliseconds(400), &r, 0, /*session=*/1);  // rank 1 never comes
  });
  while (!gate->waited()) absl::SleepFor(absl::Milliseconds(1));  // the notice is under way
  std::atomic<bool> imported{false};
  std::thread import([&] {
    (void)job.ImportState(state, /*with_config=*/false, absl::Seconds(60));
    imported = true;
  });
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_FALSE(imported.load()) << "imported while the notice was under way";
  gate->Open();
  import.join();
  step.join();
  EXPECT_TRUE(imported.load());
}

}  // namespace
}  // namespace gstab
