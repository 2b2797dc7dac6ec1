// End-to-end: dying workers, bad shared memory, isolation between jobs, and local-worker rounds,
// against a real gstabd process.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/shm_names.h"
#include "gtest/gtest.h"
#include "tests/server/faults_fixture.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

using testing::DaemonProcess;
using testing::JobOptions;
using testing::StepWithToken;
using testing::WaitForArrivals;
using testing::Subprocess;
using testing::TempDir;
using testing::TestWorker;

class E2eFaultsTest : public testing::FaultsFixture {};

bool MapsContain(pid_t pid, const std::string& needle) {
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  std::stringstream ss;
  ss << maps.rdbuf();
  return ss.str().find(needle) != std::string::npos;
}

TEST_F(E2eFaultsTest, KilledWorkerIsReleasedWithinTheLeaseAndOthersKeepStepping) {
  auto survivor = TestWorker::Create(daemon_->socket(), JobOptions("survivor"));
  ASSERT_TRUE(survivor.ok());
  absl::StatusOr<Subprocess> victim = Subprocess::Start(
      {testing::BinaryPath("examples/mlp_trainer"), "--socket=" + daemon_->socket(), "--job=victim",
       "--steps=1000000", "--print_every=1", "--spike_steps="});
  ASSERT_TRUE(victim.ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(victim->ReadLine(absl::Seconds(20)).ok());
  const std::string shm = ShmNamePrefix(victim->pid());
  ASSERT_TRUE(MapsContain(daemon_->process().pid(), shm)) << "victim's gradients not mapped";

  victim->Signal(SIGKILL);
  ASSERT_TRUE(victim->Wait(absl::Seconds(10)).ok());
  const absl::Time killed = absl::Now();
  // The dead worker's shared object goes from /dev/shm too, a moment after it is unmapped.
  auto in_dev_shm = [&shm] {
    for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
      if (e.path().filename().string().rfind(shm, 0) == 0) return true;
    }
    return false;
  };
  uint64_t step = 1;
  while ((MapsContain(daemon_->process().pid(), shm) || in_dev_shm()) &&
         absl::Now() - killed < absl::Seconds(5)) {
    ExpectServing(survivor->get(), step++);
  }
  EXPECT_FALSE(MapsContain(daemon_->process().pid(), shm))
      << "the dead worker's shared memory is still mapped 5 s after a 1 s lease";
  EXPECT_GT(step, 1u);
  EXPECT_FALSE(in_dev_shm());
  ExpectServing(survivor->get(), step);
}

TEST_F(E2eFaultsTest, TruncatedSharedMemoryIsRefusedAndTheDaemonServesOn) {
  auto bystander = TestWorker::Create(daemon_->socket(), JobOptions("bystander"));
  ASSERT_TRUE(bystander.ok()) << bystander.status();
  auto worker = TestWorker::Create(daemon_->socket(), JobOptions("truncating"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  ExpectServing(worker->get(), 1);
  absl::StatusOr<v1::GetStatsResponse> before = (*worker)->client().GetStats();
  ASSERT_TRUE(before.ok()) << before.status();
  // The worker shrinks its registered object (its own pages past 4 KiB are gone too: it must
  // not touch them either).
  const int fd = shm_open((*worker)->arena().shm_name().c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 4096), 0);
  close(fd);
  absl::StatusOr<v1::StepResponse> r = (*worker)->client().Step(2);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("shrank from"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("nothing was applied to this step"), std::string::npos)
      << r.status();
  // "nothing was applied to this step": the job's statistics are as they were.
  absl::StatusOr<v1::GetStatsResponse> after = (*worker)->client().GetStats();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->last_step(), before->last_step());
  ASSERT_EQ(after->groups_size(), before->groups_size());
  for (int g = 0; g < after->groups_size(); ++g) {
    EXPECT_EQ(after->groups(g).accepted_steps(), before->groups(g).accepted_steps());
    EXPECT_EQ(after->groups(g).m(), before->groups(g).m());
    EXPECT_EQ(after->groups(g).non_finite_steps(), before->groups(g).non_finite_steps());
  }
  ExpectServing(bystander->get(), 1);
}

// gstabd opens shared memory on a worker's behalf: only objects the worker's own uid owns (else
// any user the socket admits could have another user's gradients scaled).
TEST_F(E2eFaultsTest, AWorkerRegistersOnlyItsOwnSharedMemory) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to give an object to another uid";
  GradientArena arena;
  arena.AddTensor("x", 16, DType::kFloat32);
  ASSERT_TRUE(arena.Allocate().ok());
  const int fd = shm_open(arena.shm_name().c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fchown(fd, 65534, 65534), 0);  // as if another user had made it
  close(fd);
  auto client = Client::Connect(daemon_->socket());
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->Attach(JobOptions("foreign")).ok());
  absl::Status s = (*client)->Register(arena);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_NE(s.message().find("belongs to uid 65534, not to this worker's uid 0"), std::string::npos)
      << s;
}

// gstabd started by `prefix` on `state_dir` (and a socket of its own), expected to refuse to
// start: its exit code and output.
std::pair<int, std::string> StartRefused(const std::string& gstabd, const std::string& state_dir,
                                         const std::vector<std::string>& prefix = {}) {
  std::vector<std::string> argv = prefix;
  for (const std::string& arg :
       {gstabd, "--socket=" + state_dir + ".sock", "--state_dir=" + state_dir,
        std::string("--metrics_port=-1"), std::string("--backend=cpu")}) {
    argv.push_back(arg);
  }
  return testing::RunBounded(argv);
}

// A state directory is one gstabd's: a second gstabd on it (with a socket of its own) is refused
// before it touches the first one's files. A checkpoint gstabd cannot read stops it at start,
// rather than let its job start afresh over it, losing its statistics and owner.
TEST_F(E2eFaultsTest, ABusyStateDirectoryOrAnUnreadableCheckpointStopsGstabdAtStart) {
  const std::string state = dir_.path() + "/state";
  const std::string in_flight = state + "/j.jobstate:tmp:1.1";  // as if the first were saving
  { std::ofstream(in_flight) << "x"; }
  auto [code, out] = StartRefused(testing::BinaryPath("server/gstabd"), state);
  EXPECT_NE(code, 0) << out;
  EXPECT_NE(out.find("is in use by another process"), std::string::npos) << out;
  EXPECT_TRUE(std::filesystem::exists(in_flight));
  auto worker = TestWorker::Create(daemon_->socket(), JobOptions("first-serves"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  ExpectServing(worker->get(), 1);

  if (geteuid() != 0) GTEST_SKIP() << "needs root to run gstabd as another uid";
  // A folder uid 65534 may write, holding a checkpoint only root may read.
  const std::string other = dir_.path() + "/other";
  std::filesystem::create_directories(other + "/state");
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
  ASSERT_EQ(::chown(other.c_str(), 65534, 65534), 0);
  ASSERT_EQ(::chown((other + "/state").c_str(), 65534, 65534), 0);
  const std::string gstabd = other + "/gstabd";
  std::filesystem::copy_file(testing::BinaryPath("server/gstabd"), gstabd);
  ASSERT_EQ(::chmod(gstabd.c_str(), 0755), 0);
  const std::string checkpoint = other + "/state/root-only.jobstate";
  { std::ofstream(checkpoint) << "a job's statistics"; }
  ASSERT_EQ(::chmod(checkpoint.c_str(), 0600), 0);
  std::tie(code, out) =
      StartRefused(gstabd, other + "/state",
                   {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"});
  EXPECT_NE(code, 0) << out;
  EXPECT_NE(out.find("cannot open '" + checkpoint + "': Permission denied"), std::string::npos)
      << out;
  EXPECT_NE(out.find("move it out of --state_dir"), std::string::npos) << out;
  std::ifstream kept(checkpoint);
  std::string text((std::istreambuf_iterator<char>(kept)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "a job's statistics");
}

TEST_F(E2eFaultsTest, JobsShareNothingAndATokenActsOnlyOnItsJob) {
  auto a = TestWorker::Create(daemon_->socket(), JobOptions("job-a"));
  auto b = TestWorker::Create(daemon_->socket(), JobOptions("job-b"));
  ASSERT_TRUE(a.ok() && b.ok());
  testing::Reference ref_a(RuleParams{});
  for (uint64_t step = 1; step <= 10; ++step) {
    // Job b, with wildly different norms, steps first: job a must not notice.
    (*b)->Fill(step, 2, 1000.0f);
    (*a)->Fill(step, 1);
    const std::vector<unsigned char> a_before = (*a)->Bytes();
    ASSERT_TRUE((*b)->client().Step(step).ok());
    EXPECT_TRUE((*a)->Bytes() == a_before) << "job b's step touched job a's gradients";
    const testing::ReferenceStep expected = ref_a.Step(**a);
    absl::StatusOr<v1::StepResponse> r = (*a)->client().Step(step);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->groups(0).scale(), expected.outcomes[0].scale) << "step " << step;
    EXPECT_TRUE((*a)->Bytes() == expected.bytes);
  }
  absl::StatusOr<v1::GetStatsResponse> stats = (*a)->client().GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->job(), "job-a");
  for (const v1::GroupStats& g : stats->groups()) EXPECT_LT(g.norm_mean(), 100.0) << g.group();
  // Detaching b leaves a's session and statistics alone; b's token is then dead.
  const std::string b_token = (*b)->client().session();
  ASSERT_TRUE((*b)->client().Detach().ok());
  EXPECT_EQ(StepWithToken(&(*b)->client(), b_token).code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*b)->client().GetStats().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*a)->client().GetStats()->groups_size(), 3);
}

// The norm of each group (g, c, big) of a round over the workers' current gradients: sharded
// groups sum the workers' slices.
std::vector<double> RoundNorms(const std::vector<TestWorker*>& workers) {
  std::vector<double> sums(3, 0.0);
  for (TestWorker* w : workers) {
    const std::vector<double> own = testing::GroupSums(*w);
    for (size_t g = 0; g < sums.size(); ++g) sums[g] += own[g];
  }
  for (double& s : sums) s = std::sqrt(s);
  return sums;
}

void ExpectNorms(const v1::StepResponse& r, const std::vector<double>& norms) {
  ASSERT_EQ(r.groups_size(), static_cast<int>(norms.size()));
  for (int g = 0; g < r.groups_size(); ++g) {
    EXPECT_NEAR(r.groups(g).norm(), norms[g], 1e-9 * norms[g]) << r.groups(g).group();
  }
}

// Local rank `rank` of job `job`, whose two local workers share its statistics.
absl::StatusOr<std::unique_ptr<TestWorker>> LocalWorker(const std::string& socket,
                                                        const std::string& job, uint32_t rank) {
  AttachOptions o = JobOptions(job);
  o.local_world_size = 2;
  o.local_rank = rank;
  return TestWorker::Create(socket, o);
}

TEST_F(E2eFaultsTest, LocalWorkersStepTogetherAndAMissingOneTimesOut) {
  auto w0 = LocalWorker(daemon_->socket(), "two-local", 0);
  auto w1 = LocalWorker(daemon_->socket(), "two-local", 1);
  ASSERT_TRUE(w0.ok() && w1.ok());
  (*w0)->Fill(1, 1);
  (*w1)->Fill(1, 2);
  // Sharded groups: the norm covers both workers' slices.
  const std::vector<double> norms = RoundNorms({w0->get(), w1->get()});
  std::vector<unsigned char> before0 = (*w0)->Bytes(), before1 = (*w1)->Bytes();
  absl::StatusOr<v1::StepResponse> r1;
  std::thread t([&] { r1 = (*w1)->client().Step(1); });
  EXPECT_TRUE(WaitForArrivals(&(*w0)->client(), {1}));  // operators see who is missing
  absl::StatusOr<v1::StepResponse> r0 = (*w0)->client().Step(1);
  t.join();
  ASSERT_TRUE(r0.ok()) << r0.status();
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_EQ(r0->SerializeAsString(), r1->SerializeAsString());  // one result for the round
  ExpectNorms(*r0, norms);
  // Both workers' gradients were scaled, by the round's scales.
  EXPECT_TRUE((*w0)->Bytes() == testing::ScaledBytes(**w0, std::move(before0), *r0));
  EXPECT_TRUE((*w1)->Bytes() == testing::ScaledBytes(**w1, std::move(before1), *r1));
  absl::StatusOr<v1::GetStatsResponse> after = (*w0)->client().GetStats();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->arrived_local_ranks_size(), 0);  // nothing waits between steps

  (*w0)->Fill(2, 1);
  absl::StatusOr<v1::StepResponse> alone = (*w0)->client().Step(2);
  EXPECT_EQ(alone.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(alone.status().message().find("[1]"), std::string::npos) << alone.status();
}

// A local worker that detaches (its process ends) while the others stay is not waited for: a
// Step waiting for it is told so at once, not at the step timeout (a minute here), and so is
// one that comes after. A run that ends and starts again waits for its workers as usual.
TEST(E2eDetachTest, AStepIsNotKeptWaitingForALocalWorkerThatDetached) {
  testing::TempDir dir;
  auto daemon = testing::DaemonProcess::Start(dir.path(), {"--step_timeout_ms=60000"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto w0 = LocalWorker(daemon->socket(), "leaving", 0);
  auto w1 = LocalWorker(daemon->socket(), "leaving", 1);
  ASSERT_TRUE(w0.ok() && w1.ok());
  std::future<absl::StatusOr<v1::StepResponse>> waiting =
      std::async(std::launch::async, [&] { return (*w0)->client().Step(1); });
  ASSERT_TRUE(WaitForArrivals(&(*w1)->client(), {0}));
  ASSERT_TRUE((*w1)->client().Detach().ok());
  ASSERT_EQ(waiting.wait_for(std::chrono::seconds(30)), std::future_status::ready)
      << "the Step waited for the detached worker";
  absl::StatusOr<v1::StepResponse> later = (*w0)->client().Step(1);
  for (const auto& r : {waiting.get(), later}) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
    EXPECT_NE(r.status().message().find("local ranks [1], whose workers detached"),
              std::string::npos)
        << r.status();
  }
  // Attached and registered again, rank 1 steps with rank 0.
  auto back = LocalWorker(daemon->socket(), "leaving", 1);
  ASSERT_TRUE(back.ok()) << back.status();
  std::future<absl::StatusOr<v1::StepResponse>> r1 =
      std::async(std::launch::async, [&] { return (*back)->client().Step(1); });
  ASSERT_TRUE(WaitForArrivals(&(*w0)->client(), {1}));
  EXPECT_TRUE((*w0)->client().Step(1).ok());
  EXPECT_TRUE(r1.get().ok());

  // The run ends (every worker detaches) and the job runs again: its first worker's step
  // waits for the other, which attaches later, as in any run's start.
  ASSERT_TRUE((*w0)->client().Detach().ok());
  ASSERT_TRUE((*back)->client().Detach().ok());
  auto again0 = LocalWorker(daemon->socket(), "leaving", 0);
  ASSERT_TRUE(again0.ok()) << again0.status();
  std::future<absl::StatusOr<v1::StepResponse>> first =
      std::async(std::launch::async, [&] { return (*again0)->client().Step(2); });
  ASSERT_TRUE(WaitForArrivals(&(*again0)->client(), {0}));
  auto again1 = LocalWorker(daemon->socket(), "leaving", 1);
  ASSERT_TRUE(again1.ok()) << again1.status();
  EXPECT_TRUE((*again1)->client().Step(2).ok());
  const absl::StatusOr<v1::StepResponse> r = first.get();
  EXPECT_TRUE(r.ok()) << r.status();
}

// A local worker that stepped and then was replaced (it restarted and attached again) takes its
// step with it: the round waits for the new worker's own Step rather than run on its buffers
// (perhaps in the middle of its backward pass).
TEST_F(E2eFaultsTest, ReplacedWorkersStepIsNotTakenForItsSuccessors) {
  auto first = LocalWorker(daemon_->socket(), "restarted-rank", 0);
  auto other = LocalWorker(daemon_->socket(), "restarted-rank", 1);
  ASSERT_TRUE(first.ok() && other.ok());
  (*first)->Fill(1, 1);
  absl::StatusOr<v1::StepResponse> voided;
  std::thread abandoned([&] { voided = (*first)->client().Step(1); });
  // Its Step has arrived and waits for rank 1.
  ASSERT_TRUE(WaitForArrivals(&(*other)->client(), {0}));
  auto successor = LocalWorker(daemon_->socket(), "restarted-rank", 0);  // replaces `first`'s
  ASSERT_TRUE(successor.ok()) << successor.status();
  // The abandoned Step left with its session: nobody has arrived.
  absl::StatusOr<v1::GetStatsResponse> left = (*other)->client().GetStats();
  ASSERT_TRUE(left.ok()) << left.status();
  EXPECT_EQ(left->arrived_local_ranks_size(), 0);
  (*successor)->Fill(1, 3);
  (*other)->Fill(1, 2);
  const std::vector<double> norms = RoundNorms({successor->get(), other->get()});
  std::vector<unsigned char> successor_before = (*successor)->Bytes();
  const std::vector<unsigned char> abandoned_before = (*first)->Bytes();
  absl::StatusOr<v1::StepResponse> r1;
  std::thread t([&] { r1 = (*other)->client().Step(1); });
  ASSERT_TRUE(WaitForArrivals(&(*other)->client(), {1}));
  absl::StatusOr<v1::StepResponse> r0 = (*successor)->client().Step(1);
  t.join();
  abandoned.join();
  // The abandoned call is told its session was replaced, not handed the round it was not part
  // of.
  EXPECT_EQ(voided.status().code(), absl::StatusCode::kAborted) << voided.status();
  ASSERT_TRUE(r0.ok()) << r0.status();
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_EQ(r0->SerializeAsString(), r1->SerializeAsString());
  ExpectNorms(*r0, norms);  // the successor's gradients, not the abandoned ones
  // The successor's gradients were scaled, and the abandoned session's left as they were.
  EXPECT_TRUE((*successor)->Bytes() ==
              testing::ScaledBytes(**successor, std::move(successor_before), *r0));
  EXPECT_TRUE((*first)->Bytes() == abandoned_before);
}

TEST_F(E2eFaultsTest, SocketIsGroupOnlyAndHealthServes) {
  struct stat st;
  ASSERT_EQ(stat(daemon_->socket().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  auto client = Client::Connect(daemon_->socket());
  ASSERT_TRUE(client.ok());
  EXPECT_TRUE((*client)->CheckHealth().ok());
  absl::Status absent =
      Client::Connect(dir_.path() + "/nobody.sock", absl::Milliseconds(200)).status();
  EXPECT_EQ(absent.code(), absl::StatusCode::kUnavailable) << absent;
  EXPECT_NE(absent.message().find("nobody.sock (nothing is there)"), std::string::npos) << absent;
  // A path no unix socket can have is refused rather than waited on; none at all is the
  // default socket (without $GSTAB_SOCKET), which has no gstabd here.
  absl::Status s = Client::Connect("/tmp/" + std::string(120, 'x'), absl::Seconds(5)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("a unix socket's path has at most 107"), std::string::npos) << s;
  // So is one gRPC would dial as another (a URI's query): it would wait out the timeout.
  s = Client::Connect(dir_.path() + "/gstabd?.sock", absl::Seconds(30)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("has '?'"), std::string::npos) << s;
  unsetenv("GSTAB_SOCKET");
  s = Client::Connect("", absl::Milliseconds(200)).status();
  EXPECT_NE(s.message().find("/run/gstab/gstabd.sock"), std::string::npos) << s;
  // So is a path where something other than a socket is: a folder, a file.
  s = Client::Connect(dir_.path(), absl::Seconds(30)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("is a folder, not a socket"), std::string::npos) << s;
  const std::string file = dir_.path() + "/not-a-socket";
  std::ofstream(file) << "x";
  s = Client::Connect(file, absl::Seconds(30)).status();
  EXPECT_NE(s.message().find("is a file, not a socket"), std::string::npos) << s;
}

TEST(E2ePeerCredentialsTest, OnlyAllowListedPeersReachTheService) {
  TempDir refusing_dir, allowing_dir;
  const std::string other_uid = std::to_string(getuid() + 12345);
  auto refusing = DaemonProcess::Start(refusing_dir.path(), {"--allow_uids=" + other_uid});
  auto allowing = DaemonProcess::Start(
      allowing_dir.path(), {"--allow_uids=" + other_uid + "," + std::to_string(getuid())});
  ASSERT_TRUE(refusing.ok() && allowing.ok());
  // Told why, within the short timeout.
  auto refused = Client::Connect(refusing->socket(), absl::Milliseconds(500));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied) << refused.status();
  EXPECT_NE(refused.status().message().find(
                absl::StrCat("uid ", getuid(), " gid ", getgid(),
                             " is not in the allow-list (--allow_uids, --allow_gids)")),
            std::string::npos)
      << refused.status();
  // A process that connects in a loop does not fill the log: one line a second at most, which
  // counts what it left out.
  auto connect_once = [&] {
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, refusing->socket().c_str(), sizeof addr.sun_path - 1);
    (void)connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    close(fd);
  };
  for (int i = 0; i < 2000; ++i) connect_once();
  absl::SleepFor(absl::Milliseconds(1500));
  connect_once();  // logged, with the count of those before it
  std::string text;
  int lines = 0;
  for (int i = 0; i < 100 && text.find("refused since the last such line") == std::string::npos;
       ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    std::ifstream log(refusing_dir.path() + "/gstabd.log");
    std::stringstream read;
    read << log.rdbuf();
    text = read.str();
  }
  for (size_t at = text.find("refused a connection from pid"); at != std::string::npos;
       at = text.find("refused a connection from pid", at + 1)) {
    ++lines;
  }
  EXPECT_GE(lines, 1) << text;
  EXPECT_LT(lines, 50) << "2,001 refused connections, logged one line each";
  EXPECT_NE(text.find("refused since the last such line"), std::string::npos) << text;

  auto worker = TestWorker::Create(allowing->socket(), JobOptions("allowed"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  (*worker)->Fill(1, 1);
  EXPECT_TRUE((*worker)->client().Step(1).ok());

  // By primary gid: another gid's list refuses this process, its own admits it.
  TempDir other_gid_dir, own_gid_dir;
  auto other_gid = DaemonProcess::Start(other_gid_dir.path(),
                                        {"--allow_gids=" + std::to_string(getgid() + 12345)});
  auto own_gid =
      DaemonProcess::Start(own_gid_dir.path(), {"--allow_gids=" + std::to_string(getgid())});
  ASSERT_TRUE(other_gid.ok() && own_gid.ok());
  EXPECT_EQ(Client::Connect(other_gid->socket(), absl::Milliseconds(500)).status().code(),
            absl::StatusCode::kPermissionDenied);
  auto by_gid = TestWorker::Create(own_gid->socket(), JobOptions("allowed-by-gid"));
  ASSERT_TRUE(by_gid.ok()) << by_gid.status();
}

TEST_F(E2eFaultsTest, CExampleAttachesAndSeesTheSpike) {
  absl::StatusOr<Subprocess> c = Subprocess::Start(
      {testing::BinaryPath("examples/minimal_c"), daemon_->socket(), "c-example"});
  ASSERT_TRUE(c.ok());
  const std::string out = c->ReadAll();
  EXPECT_EQ(c->Wait(absl::Seconds(30)).value_or(-1), 0) << out;
  EXPECT_NE(out.find("step 30 raw 2.2"), std::string::npos) << out;
  EXPECT_NE(out.find("spikes 1"), std::string::npos) << out;
}

TEST_F(E2eFaultsTest, TrainerSurvivesSpikesWithStabilizeAndDivergesWithout) {
  auto run = [&](const std::string& policy) {
    absl::StatusOr<Subprocess> p = Subprocess::Start(
        {testing::BinaryPath("examples/mlp_trainer"), "--socket=" + daemon_->socket(),
         "--job=trainer-" + policy, "--policy=" + policy, "--optimizer=sgd", "--lr=0.05",
         "--steps=300", "--spike_steps=150", "--spike_factor=1e4"});
    EXPECT_TRUE(p.ok());
    const std::string out = p->ReadAll();
    EXPECT_EQ(p->Wait(absl::Seconds(60)).value_or(-1), 0) << out;
    return out.substr(out.find("SUMMARY"));
  };
  EXPECT_NE(run("none").find("diverged=yes"), std::string::npos);
  EXPECT_NE(run("stabilize").find("diverged=no"), std::string::npos);
}

// A misspelt policy is refused, naming those there are (it ran `stabilize`, and its SUMMARY
// named the misspelling).
TEST_F(E2eFaultsTest, TrainerRefusesAPolicyItDoesNotKnow) {
  absl::StatusOr<Subprocess> p = Subprocess::Start({testing::BinaryPath("examples/mlp_trainer"),
                                                    "--socket=" + daemon_->socket(),
                                                    "--job=trainer-typo", "--policy=stabilise"});
  ASSERT_TRUE(p.ok());
  const std::string out = p->ReadAll();
  EXPECT_EQ(p->Wait(absl::Seconds(30)).value_or(-1), 1) << out;
  EXPECT_NE(out.find("unknown --policy 'stabilise': none, stabilize, stabilize-stable-spam"),
            std::string::npos)
      << out;
}

}  // namespace
}  // namespace gstab
