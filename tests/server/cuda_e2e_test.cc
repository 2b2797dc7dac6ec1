// The GPU path end to end: gstabd with --backend=cuda and separate worker processes whose
// gradients stay in their GPU memory (CUDA IPC, the ready and done words, the results buffer).
// Skipped without a GPU.
#include <cuda_runtime_api.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "client_lib/client.h"
#include "gtest/gtest.h"
#include "server/cuda/cuda_ipc.h"
#include "tests/testing/gpu.h"
#include "tests/testing/subprocess.h"

namespace gstab {
namespace {

// What gstabd holds: open descriptors, mappings of files (shared memory, device files; not
// anonymous memory, which thread stacks and malloc arenas grow as the server's thread pool
// does), and the device memory in use (the GPU's free memory, with no worker alive).
struct Holdings {
  size_t fds = 0;
  size_t maps = 0;
  size_t device_free = 0;
  std::multiset<std::string> lines;  // the file mappings, for a failure message
};

bool operator==(const Holdings& a, const Holdings& b) {
  return a.fds == b.fds && a.maps == b.maps && a.device_free == b.device_free;
}

Holdings HoldingsOf(pid_t pid) {
  Holdings h;
  const std::string proc = "/proc/" + std::to_string(pid);
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(proc + "/fd")) ++h.fds;
  std::ifstream maps(proc + "/maps");
  for (std::string line; std::getline(maps, line);) {
    if (line.find('/') == std::string::npos) continue;  // anonymous
    ++h.maps;
    h.lines.insert(line);
  }
  size_t total = 0;
  cudaMemGetInfo(&h.device_free, &total);
  return h;
}

// The mappings `after` has that `before` does not, one per line.
std::string NewMappings(const Holdings& before, const Holdings& after) {
  std::vector<std::string> added;
  std::set_difference(after.lines.begin(), after.lines.end(), before.lines.begin(),
                      before.lines.end(), std::back_inserter(added));
  std::string out;
  for (const std::string& line : added) out += "  + " + line + "\n";
  return out;
}

// The first line of `p`'s output that contains `marker`, within `timeout`. Other lines (a
// library's warning, say) are skipped, and quoted in the error if none comes.
absl::StatusOr<std::string> ReadUntil(testing::Subprocess& p, absl::string_view marker,
                                      absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string skipped;
  for (;;) {
    absl::StatusOr<std::string> line =
        p.ReadLine(std::max(deadline - absl::Now(), absl::ZeroDuration()));
    if (!line.ok()) {
      return absl::Status(line.status().code(),
                          absl::StrCat(line.status().message(), "; before it: ", skipped));
    }
    if (absl::StrContains(*line, marker)) return line;
    absl::StrAppend(&skipped, *line, "\n");
  }
}

class CudaE2eTest : public ::testing::Test {
 protected:
  // gstabd's flags besides these.
  virtual std::vector<std::string> MoreFlags() const { return {}; }

  void SetUp() override {
    GSTAB_SKIP_WITHOUT_GPU(CudaDeviceCount() > 0);
    std::vector<std::string> flags = {"--backend=cuda", "--lease_ms=1000"};
    for (std::string& f : MoreFlags()) flags.push_back(std::move(f));
    auto d = testing::DaemonProcess::Start(dir_.path(), flags);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_.emplace(*std::move(d));
  }
  void TearDown() override {
    if (!daemon_.has_value()) return;
    EXPECT_EQ(daemon_->Stop().value_or(-1), 0);
    if (HasFailure()) std::cout << "gstabd's log:\n" << daemon_->Log();
  }

  // gstabd's holdings once they equal `want` or `settle` has passed (connections of workers
  // that have exited close asynchronously).
  Holdings SettledHoldings(const Holdings& want, absl::Duration settle = absl::Seconds(5)) {
    const absl::Time deadline = absl::Now() + settle;
    Holdings h = HoldingsOf(daemon_->process().pid());
    while (!(h == want) && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(100));
      h = HoldingsOf(daemon_->process().pid());
    }
    return h;
  }

  // Runs a worker to completion; its output.
  std::string RunWorker(const std::vector<std::string>& args, int* rc) {
    std::vector<std::string> argv = {testing::BinaryPath("tests/cuda_e2e_worker"),
                                     daemon_->socket()};
    argv.insert(argv.end(), args.begin(), args.end());
    auto worker = testing::Subprocess::Start(argv);
    if (!worker.ok()) return worker.status().ToString();
    std::string out = worker->ReadAll();
    *rc = worker->Wait(absl::Seconds(240)).value_or(-1);
    return out;
  }

  // A worker of `job` in `mode` ("held", "orphaned": see cuda_e2e_worker.cc) whose step waits
  // at its gate until `flag` exists, once it has said HELD.
  absl::StatusOr<testing::Subprocess> StartHeldWorker(const std::string& job,
                                                      const std::string& mode,
                                                      const std::string& flag) {
    auto worker = testing::Subprocess::Start(
        {testing::BinaryPath("tests/cuda_e2e_worker"), daemon_->socket(), job, mode, flag});
    if (!worker.ok()) return worker.status();
    absl::StatusOr<std::string> line = ReadUntil(*worker, "HELD", absl::Seconds(60));
    if (!line.ok()) return line.status();
    return worker;
  }

  testing::TempDir dir_;
  std::optional<testing::DaemonProcess> daemon_;
};

TEST_F(CudaE2eTest, WorkerStepsThroughGstabdOnTheGpu) {
  int rc = -1;
  const std::string out = RunWorker({"gpu-job", "check"}, &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("RESULT ok"), std::string::npos) << out;
}

// A second CudaGradients registered through the same client: gstabd frees the first's results
// buffer, which the first unmaps beforehand; its Step is refused, the second's steps run.
TEST_F(CudaE2eTest, ASecondRegistrationThroughTheClientReplacesTheFirst) {
  int rc = -1;
  const std::string out = RunWorker({"replace-job", "replace"}, &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("RESULT ok"), std::string::npos) << out;
}

// The same with the cross-node stage run through a world-size-1 NCCL communicator, which a
// job of one GPU on one node otherwise skips: the NCCL path of a multi-node job, on one GPU.
class CudaE2eNcclTest : public CudaE2eTest {
 protected:
  std::vector<std::string> MoreFlags() const override { return {"--nccl_one_rank"}; }
};

TEST_F(CudaE2eNcclTest, WorkerStepsThroughGstabdOnTheGpu) {
  int rc = -1;
  const std::string out = RunWorker({"gpu-job", "check"}, &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("RESULT ok"), std::string::npos) << out;
  EXPECT_TRUE(daemon_->WaitForLog("through NCCL, rank 0 of 1")) << "no communicator was made";
}

// A CUDA job whose worker has gone is retired once idle (--job_idle_s): its statistics come
// home from the GPU and are checkpointed at its last step, its pipeline and device memory go,
// and gstabd serves other jobs on.
class CudaE2eRetireTest : public CudaE2eTest {
 protected:
  std::vector<std::string> MoreFlags() const override { return {"--job_idle_s=1"}; }
};

TEST_F(CudaE2eRetireTest, IdleJobIsCheckpointedAtItsLastStepAndGstabdServesOn) {
  int rc = -1;
  std::string out = RunWorker({"retiring", "check"}, &rc);
  ASSERT_EQ(rc, 0) << out;
  // The worker's lease expires (1 s), then the job's idle time (1 s).
  const std::string retired = "job 'retiring' retired at step 4";
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (!absl::StrContains(daemon_->Log(), retired) && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(absl::StrContains(daemon_->Log(), retired)) << daemon_->Log();
  EXPECT_TRUE(std::filesystem::exists(dir_.path() + "/state/retiring.jobstate"));
  out = RunWorker({"after", "check"}, &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("RESULT ok"), std::string::npos) << out;
}

// 10,000 steps leak no device memory (seen by the worker) and no descriptors or mappings in
// gstabd once the worker has gone. gstabd's holdings are compared across a second run like the
// first, after the first has grown what grows once (its CUDA context, server threads). The
// second run is of the same job: gstabd keeps a detached worker's results buffer until that
// local rank registers again (the worker may still map it), which the second run does.
TEST_F(CudaE2eTest, TenThousandStepsLeakNothing) {
  int rc = -1;
  std::string out = RunWorker({"warm-up", "loop", "10000"}, &rc);
  ASSERT_EQ(rc, 0) << out;
  // Once the warm-up job's release (on gstabd's background thread) has settled: two readings a
  // second apart agree.
  Holdings before = HoldingsOf(daemon_->process().pid());
  for (int i = 0; i < 10; ++i) {
    absl::SleepFor(absl::Seconds(1));
    const Holdings now = HoldingsOf(daemon_->process().pid());
    if (now == before) break;
    before = now;
  }
  out = RunWorker({"warm-up", "loop", "10000"}, &rc);
  ASSERT_EQ(rc, 0) << out;
  const Holdings after = SettledHoldings(before);
  std::cout << out << "gstabd fds " << before.fds << " -> " << after.fds << ", mappings "
            << before.maps << " -> " << after.maps << "\n";
  EXPECT_EQ(after.fds, before.fds);
  EXPECT_EQ(after.maps, before.maps) << "new mappings:\n" << NewMappings(before, after);
  EXPECT_EQ(after.device_free, before.device_free) << "gstabd's device memory changed";
  size_t at_100 = 0, at_end = 0;
  const size_t a = out.find("free_at_100="), b = out.find("free_at_end=");
  ASSERT_NE(a, std::string::npos);
  ASSERT_TRUE(absl::SimpleAtoi(out.substr(a + 12, out.find(' ', a) - a - 12), &at_100)) << out;
  ASSERT_TRUE(absl::SimpleAtoi(out.substr(b + 12, out.find('\n', b) - b - 12), &at_end)) << out;
  EXPECT_EQ(at_100, at_end) << "device memory changed between step 100 and step 10,000";
}

// Step answers without waiting for the GPU, and jobs whose steps are held at their workers'
// ready words (long backward passes) hold up no other job: in a fresh gstabd, so that the held
// steps are the first thing gstabd's device runs (kernels still to load then would wait for
// them), and several, so that their waiting streams would share the device's hardware queues
// with the other job's at CUDA's default of 8 queues.
TEST_F(CudaE2eTest, HeldStepsHoldUpNeitherTheirWorkersNorOtherJobs) {
  constexpr int kHeld = 6;
  const std::string flag = dir_.path() + "/open-the-gates";
  std::vector<testing::Subprocess> held;
  for (int i = 0; i < kHeld; ++i) {
    auto w =
        testing::Subprocess::Start({testing::BinaryPath("tests/cuda_e2e_worker"), daemon_->socket(),
                                    absl::StrCat("held-", i), "held", flag});
    ASSERT_TRUE(w.ok()) << w.status();
    held.push_back(*std::move(w));
  }
  for (int i = 0; i < kHeld; ++i) {
    absl::StatusOr<std::string> line = ReadUntil(held[i], "HELD", absl::Seconds(60));
    ASSERT_TRUE(line.ok() && line->find("HELD") != std::string::npos)
        << "held-" << i
        << ": Step did not answer while the worker's stream was held: " << line.status() << " "
        << (line.ok() ? *line : "");
  }
  // With a bounded wait, so that a job held up fails here instead of hanging the test; the
  // gates open either way.
  auto other = testing::Subprocess::Start(
      {testing::BinaryPath("tests/cuda_e2e_worker"), daemon_->socket(), "other-job", "check"});
  ASSERT_TRUE(other.ok()) << other.status();
  absl::StatusOr<std::string> result = ReadUntil(*other, "RESULT", absl::Seconds(60));
  EXPECT_TRUE(result.ok() && result->find("RESULT ok") != std::string::npos)
      << "another job's steps while " << kHeld
      << " were held: " << (result.ok() ? *result : result.status().ToString());
  std::ofstream(flag) << "open\n";
  EXPECT_EQ(other->Wait(absl::Seconds(60)).value_or(-1), 0);
  for (int i = 0; i < kHeld; ++i) {  // each with a deadline: a hung worker fails, not hangs
    absl::StatusOr<std::string> done = ReadUntil(held[i], "RESULT", absl::Seconds(60));
    EXPECT_TRUE(done.ok() && done->find("RESULT ok") != std::string::npos)
        << "held-" << i << ": " << (done.ok() ? *done : done.status().ToString());
    EXPECT_EQ(held[i].Wait(absl::Seconds(30)).value_or(-1), 0) << "held-" << i;
  }
}

// An import into a job of one GPU whose step is held at its worker's ready word waits for the
// step, and applies once the worker's stream has let it run.
TEST_F(CudaE2eTest, AnImportWaitsForTheStepHeldOnTheGpuThenApplies) {
  const std::string flag = dir_.path() + "/open-the-gate";
  auto worker = StartHeldWorker("import-held", "held", flag);
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto tool = Client::Connect(daemon_->socket());
  ASSERT_TRUE(tool.ok()) << tool.status();
  AttachOptions observer;
  observer.job = "import-held";
  observer.observer = true;
  ASSERT_TRUE((*tool)->Attach(observer).ok());
  absl::StatusOr<std::string> exported = (*tool)->ExportState();
  ASSERT_TRUE(exported.ok()) << exported.status();
  v1::JobState state;
  ASSERT_TRUE(state.ParseFromString(*exported));
  for (v1::GroupState& g : *state.mutable_groups()) g.set_t(77);
  state.set_last_step(50);

  std::atomic<bool> imported{false};
  absl::Status import;
  std::thread importer([&] {
    import = (*tool)->ImportState(state.SerializeAsString());
    imported = true;
  });
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_FALSE(imported.load()) << "the import did not wait for the held step: " << import;
  std::ofstream(flag) << "open\n";  // the worker's stream writes its ready word
  importer.join();
  EXPECT_TRUE(import.ok()) << import;
  absl::StatusOr<std::string> done = ReadUntil(*worker, "RESULT", absl::Seconds(60));
  EXPECT_TRUE(done.ok() && done->find("RESULT ok") != std::string::npos)
      << (done.ok() ? *done : done.status().ToString());
  EXPECT_EQ(worker->Wait(absl::Seconds(30)).value_or(-1), 0);
  absl::StatusOr<v1::GetStatsResponse> stats = (*tool)->GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  ASSERT_EQ(stats->groups_size(), 1);
  EXPECT_EQ(stats->last_step(), 50u);
  for (const v1::GroupStats& g : stats->groups()) EXPECT_EQ(g.accepted_steps(), 77u) << g.group();
}

// gstabd killed with a worker's step queued on the GPU: the worker's stream waits for a done
// word that gstabd's stream will never write. The client library writes it once its keep-alive
// finds no gstabd, so the worker's next wait for the device returns, and its next step fails,
// rather than the worker hanging for good.
TEST_F(CudaE2eTest, GstabdKilledMidStepLeavesNoWorkerWaitingForGood) {
  const std::string flag = dir_.path() + "/open-the-gate";
  auto worker = StartHeldWorker("orphaned", "orphaned", flag);
  ASSERT_TRUE(worker.ok()) << worker.status();
  daemon_->process().Signal(SIGKILL);
  ASSERT_TRUE(daemon_->process().Wait(absl::Seconds(10)).ok());
  daemon_.reset();
  std::ofstream(flag) << "open\n";
  absl::StatusOr<std::string> done = ReadUntil(*worker, "RESULT", absl::Seconds(60));
  EXPECT_TRUE(done.ok() && done->find("RESULT ok") != std::string::npos)
      << (done.ok() ? *done : done.status().ToString());
  // 128 + SIGALRM (14): the worker still waited for the device 30 s after gstabd went.
  EXPECT_EQ(worker->Wait(absl::Seconds(30)).value_or(-1), 0);
}

// A worker SIGKILLed while stepping: gstabd keeps serving other jobs and, once the lease
// expires, lets go of the dead worker's IPC mappings and memory (its results buffer included).
// Two rounds (a victim killed, a survivor served); gstabd's holdings after the second equal
// those after the first, once the first has grown what grows once. The survivors are workers
// of one job, which keeps its detached worker's results buffer until it registers again.
TEST_F(CudaE2eTest, WorkerKilledMidStepLeavesTheDaemonServing) {
  int rc = -1;
  std::string out = RunWorker({"warm-up", "loop", "10"}, &rc);
  ASSERT_EQ(rc, 0) << out;
  std::optional<Holdings> after_first;
  for (int round = 1; round <= 2; ++round) {
    const std::string victim_job = absl::StrCat("victim-", round);
    auto victim = testing::Subprocess::Start(
        {testing::BinaryPath("tests/cuda_e2e_worker"), daemon_->socket(), victim_job, "forever"});
    ASSERT_TRUE(victim.ok());
    absl::StatusOr<std::string> line = victim->ReadLine(absl::Seconds(60));
    ASSERT_TRUE(line.ok() && line->find("STEPPING") != std::string::npos)
        << line.status() << victim->ReadAll();
    absl::SleepFor(absl::Milliseconds(200));  // deep inside its loop of steps
    victim->Signal(SIGKILL);
    (void)victim->Wait(absl::Seconds(10));

    out = RunWorker({"survivor", "loop", "10"}, &rc);
    EXPECT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("RESULT ok"), std::string::npos) << out;
    absl::SleepFor(absl::Seconds(3));  // the lease is 1 s
    if (round == 1) {
      after_first = HoldingsOf(daemon_->process().pid());
      continue;
    }
    const Holdings after = SettledHoldings(*after_first, absl::Seconds(10));
    std::cout << "gstabd fds " << after_first->fds << " -> " << after.fds << ", file mappings "
              << after_first->maps << " -> " << after.maps << ", free device memory "
              << after_first->device_free << " -> " << after.device_free << "\n";
    EXPECT_EQ(after.fds, after_first->fds);
    EXPECT_EQ(after.maps, after_first->maps) << "new mappings:\n"
                                             << NewMappings(*after_first, after);
    EXPECT_EQ(after.device_free, after_first->device_free) << "gstabd's device memory changed";
  }
  std::cout << "gstabd's log:\n" << daemon_->Log();
}

TEST(CudaE2eNoGpuTest, CudaBackendRefusesToStartWithoutAGpu) {
  if (CudaDeviceCount() > 0) GTEST_SKIP() << "this machine has a GPU";
  testing::TempDir dir;
  auto [rc, out] =
      testing::RunShell(testing::GstabdPath() + " --backend=cuda --socket=" + dir.path() +
                        "/s.sock --state_dir=" + dir.path() + "/state --metrics_port=-1");
  EXPECT_EQ(rc, 2);
  EXPECT_NE(out.find("no CUDA device is usable here"), std::string::npos) << out;
}

}  // namespace
}  // namespace gstab
