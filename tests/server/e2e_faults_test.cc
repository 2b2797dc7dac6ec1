// End-to-end: bad input, dying workers, isolation between jobs, and local-worker rounds,
// against a real gstabd process.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <sstream>
#include <thread>

#include "common/shm_names.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

// gstabd's answer to a Step under session `token`, as any client could send it.
absl::Status StepWithToken(Client* client, const std::string& token) {
  grpc::ClientContext ctx;
  v1::StepRequest request;
  request.set_session(token);
  request.set_step(1);
  v1::StepResponse response;
  return FromGrpcStatus(client->stub()->Step(&ctx, request, &response));
}

using testing::DaemonProcess;
using testing::JobOptions;
using testing::Subprocess;
using testing::TempDir;
using testing::TestWorker;

class E2eFaultsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = DaemonProcess::Start(
        dir_.path(), {"--lease_ms=1000", "--max_tensors=100", "--step_timeout_ms=500"});
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::make_unique<DaemonProcess>(*std::move(d));
  }

  // A step of `worker` succeeds: the daemon still serves.
  void ExpectServing(TestWorker* worker, uint64_t step) {
    worker->Fill(step, 1);
    absl::StatusOr<v1::StepResponse> r = worker->client().Step(step);
    EXPECT_TRUE(r.ok()) << r.status();
  }

  TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(E2eFaultsTest, EveryBadRegistrationGetsTheRightCodeAndAReason) {
  auto worker = TestWorker::Create(daemon_->socket(), JobOptions("good"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  ExpectServing(worker->get(), 1);

  GradientArena small;
  small.AddTensor("x", 16, DType::kFloat32);
  ASSERT_TRUE(small.Allocate().ok());
  const v1::RegisterBuffersRequest base = small.RegistrationRequest();
  auto client = Client::Connect(daemon_->socket());
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->Attach(JobOptions("bad-input")).ok());
  // The worker learns gstabd's limits: its lease and how long a step may be held.
  EXPECT_EQ((*client)->attach_response().lease_ms(), 1000u);
  EXPECT_EQ((*client)->attach_response().step_timeout_ms(), 500u);

  struct Case {
    const char* what;
    std::function<void(v1::RegisterBuffersRequest*)> mutate;
    absl::StatusCode code;
    const char* message;
  };
  const Case cases[] = {
      {"unknown dtype",
       [](auto* r) { r->mutable_buffers(0)->set_dtype(static_cast<v1::DType>(9)); },
       absl::StatusCode::kInvalidArgument, "unknown dtype"},
      {"unknown transport",
       [](auto* r) { r->mutable_buffers(0)->set_transport(static_cast<v1::Transport>(7)); },
       absl::StatusCode::kInvalidArgument, "unknown transport"},
      {"wrong handle length",
       [](auto* r) {
         r->mutable_buffers(0)->set_transport(v1::TRANSPORT_CUDA_IPC);
         r->mutable_buffers(0)->set_ipc_handle(std::string(10, 'x'));
       },
       absl::StatusCode::kInvalidArgument, "64"},
      {"tensor outside its buffer", [](auto* r) { r->mutable_tensors(0)->set_numel(17); },
       absl::StatusCode::kInvalidArgument, "outside buffer"},
      {"overlapping tensors",
       [](auto* r) {
         r->mutable_tensors(0)->set_numel(8);
         v1::Tensor* t = r->add_tensors();
         *t = r->tensors(0);
         t->set_name("y");
         t->set_offset(4);
       },
       absl::StatusCode::kInvalidArgument, "overlaps"},
      {"two buffers aliasing one object's bytes",
       [](auto* r) {
         *r->add_buffers() = r->buffers(0);  // the same object, 16 bytes further on
         r->mutable_buffers(1)->set_offset(16);
         r->mutable_buffers(1)->set_size_bytes(r->buffers(0).size_bytes() - 16);
         v1::Tensor* t = r->add_tensors();
         *t = r->tensors(0);
         t->set_name("alias");
         t->set_buffer(1);
         t->set_numel(4);  // bytes 16 to 32 of the object: inside x's
       },
       absl::StatusCode::kInvalidArgument,
       "tensor 1 ('alias') overlaps tensor 0 ('x') in the memory of buffer 1 and buffer 0"},
      {"the aggregate's group name", [](auto* r) { r->mutable_tensors(0)->set_group("_other"); },
       absl::StatusCode::kInvalidArgument, "_other"},
      {"size beyond the shared object",
       [](auto* r) { r->mutable_buffers(0)->set_size_bytes(1 << 20); },
       absl::StatusCode::kInvalidArgument, "exceeds"},
      {"offset overflow",
       [](auto* r) { r->mutable_buffers(0)->set_offset(std::numeric_limits<uint64_t>::max() - 3); },
       absl::StatusCode::kInvalidArgument, "overflows"},
      {"absurd tensor count",
       [](auto* r) {
         for (int i = 0; i < 101; ++i) {
           v1::Tensor* t = r->add_tensors();
           t->set_name("t" + std::to_string(i));
           t->set_numel(1);
         }
       },
       absl::StatusCode::kResourceExhausted, "cap"},
      {"foreign shared memory name",
       [](auto* r) { r->mutable_buffers(0)->set_shm_name("/etc-passwd"); },
       absl::StatusCode::kInvalidArgument, "/gstab-"},
      {"missing shared object",
       [](auto* r) { r->mutable_buffers(0)->set_shm_name("/gstab-1-doesnotexist"); },
       absl::StatusCode::kNotFound, "cannot open"},
      {"duplicate tensor name",
       [](auto* r) {
         r->mutable_tensors(0)->set_numel(8);
         v1::Tensor* t = r->add_tensors();
         *t = r->tensors(0);
         t->set_offset(8);
       },
       absl::StatusCode::kInvalidArgument, "duplicate"},
      {"misaligned buffer offset", [](auto* r) { r->mutable_buffers(0)->set_offset(2); },
       absl::StatusCode::kInvalidArgument, "aligned"},
  };
  for (const Case& c : cases) {
    v1::RegisterBuffersRequest request = base;
    c.mutate(&request);
    absl::Status s = (*client)->RegisterBuffers(request);
    EXPECT_EQ(s.code(), c.code) << c.what << ": " << s;
    EXPECT_NE(s.message().find(c.message), std::string::npos) << c.what << ": " << s;
  }
  // Out-of-order and unauthenticated calls.
  EXPECT_EQ((*client)->Step(1).status().code(), absl::StatusCode::kFailedPrecondition);
  auto stranger = Client::Connect(daemon_->socket());
  ASSERT_TRUE(stranger.ok());
  absl::Status unattached = (*stranger)->Step(1).status();  // told by the client itself
  EXPECT_EQ(unattached.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(unattached.message().find("not attached"), std::string::npos) << unattached;
  EXPECT_EQ(StepWithToken(stranger->get(), "made-up-token").code(),
            absl::StatusCode::kUnauthenticated);
  AttachOptions bad_job = JobOptions("no spaces allowed");
  EXPECT_EQ((*stranger)->Attach(bad_job).code(), absl::StatusCode::kInvalidArgument);
  AttachOptions bad_config = JobOptions("bad-config");
  bad_config.config.mutable_stabilize()->set_eps(-1);
  EXPECT_EQ((*stranger)->Attach(bad_config).code(), absl::StatusCode::kInvalidArgument);
  AttachOptions bad_rank = JobOptions("bad-rank");
  bad_rank.local_rank = 2;
  bad_rank.local_world_size = 2;
  EXPECT_EQ((*stranger)->Attach(bad_rank).code(), absl::StatusCode::kInvalidArgument);
  // A job with workers here cannot be turned multi-node by another local rank's attach.
  AttachOptions pair = JobOptions("pair");
  pair.local_world_size = 2;
  auto pair_worker = TestWorker::Create(daemon_->socket(), pair);
  ASSERT_TRUE(pair_worker.ok()) << pair_worker.status();
  AttachOptions other_nodes = pair;
  other_nodes.local_rank = 1;
  other_nodes.node_count = 2;
  other_nodes.rendezvous = "anything";
  absl::Status nodes = (*stranger)->Attach(other_nodes);
  EXPECT_EQ(nodes.code(), absl::StatusCode::kFailedPrecondition) << nodes;
  EXPECT_NE(nodes.message().find("runs on 1 node(s)"), std::string::npos) << nodes;
  AttachOptions huge_local = JobOptions("huge-local");
  huge_local.local_world_size = 4000000000u;
  absl::Status huge = (*stranger)->Attach(huge_local);
  EXPECT_EQ(huge.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(huge.message().find("local_world_size"), std::string::npos) << huge;

  // Hostile statistics are refused, naming what is wrong, and change nothing.
  auto observer = Client::Connect(daemon_->socket());
  ASSERT_TRUE(observer.ok());
  AttachOptions watch = JobOptions("good");
  watch.observer = true;
  ASSERT_TRUE((*observer)->Attach(watch).ok());
  absl::StatusOr<std::string> exported = (*observer)->ExportState();
  ASSERT_TRUE(exported.ok());
  v1::JobState good_state;
  ASSERT_TRUE(good_state.ParseFromString(*exported));
  ASSERT_GT(good_state.groups_size(), 0);
  struct StateCase {
    const char* what;
    std::function<void(v1::JobState*)> mutate;
    const char* message;
  };
  const StateCase state_cases[] = {
      {"NaN mean", [](auto* s) { s->mutable_groups(0)->set_m(NAN); }, "m is nan"},
      {"negative variance", [](auto* s) { s->mutable_groups(0)->set_v(-1e30); }, "v is -1e+30"},
      {"t about to wrap", [](auto* s) { s->mutable_groups(0)->set_t(~uint64_t{0}); }, "2^62"},
      {"no step after the last", [](auto* s) { s->set_last_step(~uint64_t{0}); }, "last_step"},
      {"duplicate group", [](auto* s) { *s->add_groups() = s->groups(0); }, "duplicate group"},
      {"bad group name", [](auto* s) { s->mutable_groups(0)->set_name("a b"); }, "characters"},
      {"too many groups",
       [](auto* s) {
         for (int i = 0; i < 65537; ++i) s->add_groups()->set_name("g" + std::to_string(i));
       },
       "at most 65536"},
  };
  for (const StateCase& c : state_cases) {
    v1::JobState state = good_state;
    c.mutate(&state);
    absl::Status s = (*observer)->ImportState(state.SerializeAsString());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.what << ": " << s;
    EXPECT_NE(s.message().find(c.message), std::string::npos) << c.what << ": " << s;
  }
  absl::StatusOr<std::string> after = (*observer)->ExportState();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(*after, *exported);

  // None of it disturbed the other job.
  ExpectServing(worker->get(), 2);
}

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
  uint64_t step = 1;
  while (MapsContain(daemon_->process().pid(), shm) && absl::Now() - killed < absl::Seconds(5)) {
    ExpectServing(survivor->get(), step++);
  }
  EXPECT_FALSE(MapsContain(daemon_->process().pid(), shm))
      << "the dead worker's shared memory is still mapped 5 s after a 1 s lease";
  EXPECT_GT(step, 1u);
  // The dead worker's shared object is gone from /dev/shm too.
  bool left = false;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
    left |= e.path().filename().string().rfind(shm, 0) == 0;
  }
  EXPECT_FALSE(left);
  ExpectServing(survivor->get(), step);
}

TEST_F(E2eFaultsTest, TruncatedSharedMemoryIsRefusedAndTheDaemonServesOn) {
  auto bystander = TestWorker::Create(daemon_->socket(), JobOptions("bystander"));
  ASSERT_TRUE(bystander.ok()) << bystander.status();
  auto worker = TestWorker::Create(daemon_->socket(), JobOptions("truncating"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  ExpectServing(worker->get(), 1);
  // The worker shrinks its registered object (its own pages past 4 KiB are gone too: it must
  // not touch them either).
  const int fd = shm_open((*worker)->arena().shm_name().c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 4096), 0);
  close(fd);
  absl::StatusOr<v1::StepResponse> r = (*worker)->client().Step(2);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("shrank from"), std::string::npos) << r.status();
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

// A worker in another pid namespace (a container sharing /dev/shm) that dies leaves its shared
// memory behind, and no process of gstabd's namespace can tell its creator is gone: gstabd
// removes it when the worker's lease expires.
TEST_F(E2eFaultsTest, DeadWorkerOfAnotherPidNamespaceLeavesNoSharedMemory) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root for a pid namespace";
  auto gstab_objects = [] {
    std::set<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
      const std::string name = e.path().filename().string();
      if (name.rfind("gstab-", 0) == 0) names.insert(name);
    }
    return names;
  };
  const std::set<std::string> before = gstab_objects();
  absl::StatusOr<Subprocess> worker = Subprocess::Start(
      {"/usr/bin/unshare", "--pid", "--fork", "--kill-child",
       testing::BinaryPath("examples/mlp_trainer"), "--socket=" + daemon_->socket(),
       "--job=contained", "--steps=1000000", "--print_every=1", "--spike_steps="});
  ASSERT_TRUE(worker.ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(worker->ReadLine(absl::Seconds(20)).ok());
  std::set<std::string> its;
  for (const std::string& name : gstab_objects()) {  // (other tests may make objects too)
    if (before.count(name) == 0 && !CreatedInThisPidNamespace("/" + name)) its.insert(name);
  }
  ASSERT_FALSE(its.empty());

  worker->Signal(SIGKILL);  // unshare, and with it the worker
  ASSERT_TRUE(worker->Wait(absl::Seconds(10)).ok());
  const absl::Time deadline = absl::Now() + absl::Seconds(10);  // a 1 s lease
  auto left = [&] {
    const std::set<std::string> now = gstab_objects();
    return std::any_of(its.begin(), its.end(), [&](const auto& n) { return now.count(n) == 1; });
  };
  while (left() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(100));
  EXPECT_FALSE(left()) << "the dead worker's shared memory is still in /dev/shm";
  EXPECT_NE(daemon_->Log().find("(its lease expired)"), std::string::npos);
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

TEST_F(E2eFaultsTest, LocalWorkersStepTogetherAndAMissingOneTimesOut) {
  AttachOptions o = JobOptions("two-local");
  o.local_world_size = 2;
  auto w0 = TestWorker::Create(daemon_->socket(), o);
  o.local_rank = 1;
  auto w1 = TestWorker::Create(daemon_->socket(), o);
  ASSERT_TRUE(w0.ok() && w1.ok());
  (*w0)->Fill(1, 1);
  (*w1)->Fill(1, 2);
  absl::StatusOr<v1::StepResponse> r1;
  std::thread t([&] { r1 = (*w1)->client().Step(1); });
  absl::StatusOr<v1::StepResponse> r0 = (*w0)->client().Step(1);
  t.join();
  ASSERT_TRUE(r0.ok()) << r0.status();
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_EQ(r0->SerializeAsString(), r1->SerializeAsString());  // one result for the round
  // Sharded groups: the norm covers both workers' slices.
  (*w0)->Fill(2, 1);
  absl::StatusOr<v1::StepResponse> alone = (*w0)->client().Step(2);
  EXPECT_EQ(alone.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(alone.status().message().find("[1]"), std::string::npos) << alone.status();
}

// A local worker that stepped and then was replaced (it restarted and attached again) takes its
// step with it: the round waits for the new worker's own Step rather than run on its buffers
// (perhaps in the middle of its backward pass).
TEST_F(E2eFaultsTest, ReplacedWorkersStepIsNotTakenForItsSuccessors) {
  AttachOptions o = JobOptions("restarted-rank");
  o.local_world_size = 2;
  auto first = TestWorker::Create(daemon_->socket(), o);
  o.local_rank = 1;
  auto other = TestWorker::Create(daemon_->socket(), o);
  ASSERT_TRUE(first.ok() && other.ok());
  (*first)->Fill(1, 1);
  absl::StatusOr<v1::StepResponse> voided;
  std::thread abandoned([&] { voided = (*first)->client().Step(1); });
  absl::SleepFor(absl::Milliseconds(100));  // its Step has arrived and waits for rank 1
  o.local_rank = 0;
  auto successor = TestWorker::Create(daemon_->socket(), o);  // replaces `first`'s session
  ASSERT_TRUE(successor.ok()) << successor.status();
  // Rank 1 arrives while the abandoned Step still waits (within the 500 ms step timeout).
  (*successor)->Fill(1, 3);
  (*other)->Fill(1, 2);
  absl::StatusOr<v1::StepResponse> r1;
  std::thread t([&] { r1 = (*other)->client().Step(1); });
  absl::SleepFor(absl::Milliseconds(100));
  absl::StatusOr<v1::StepResponse> r0 = (*successor)->client().Step(1);
  t.join();
  abandoned.join();
  // The abandoned call is told its session was replaced, not handed the round it was not part
  // of.
  EXPECT_EQ(voided.status().code(), absl::StatusCode::kAborted) << voided.status();
  ASSERT_TRUE(r0.ok()) << r0.status();
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_EQ(r0->SerializeAsString(), r1->SerializeAsString());
}

TEST_F(E2eFaultsTest, SocketIsGroupOnlyAndHealthServes) {
  struct stat st;
  ASSERT_EQ(stat(daemon_->socket().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  auto client = Client::Connect(daemon_->socket());
  ASSERT_TRUE(client.ok());
  EXPECT_TRUE((*client)->CheckHealth().ok());
  EXPECT_EQ(Client::Connect(dir_.path() + "/nobody.sock", absl::Milliseconds(200)).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(E2ePeerCredentialsTest, OnlyAllowListedPeersReachTheService) {
  TempDir refusing_dir, allowing_dir;
  const std::string other_uid = std::to_string(getuid() + 12345);
  auto refusing = DaemonProcess::Start(refusing_dir.path(), {"--allow_uids=" + other_uid});
  auto allowing = DaemonProcess::Start(
      allowing_dir.path(), {"--allow_uids=" + other_uid + "," + std::to_string(getuid())});
  ASSERT_TRUE(refusing.ok() && allowing.ok());
  auto refused = Client::Connect(refusing->socket(), absl::Milliseconds(500));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
  std::ifstream log(refusing_dir.path() + "/gstabd.log");
  std::stringstream text;
  text << log.rdbuf();
  EXPECT_NE(text.str().find("refused a connection from pid"), std::string::npos) << text.str();

  auto worker = TestWorker::Create(allowing->socket(), JobOptions("allowed"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  (*worker)->Fill(1, 1);
  EXPECT_TRUE((*worker)->client().Step(1).ok());
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

}  // namespace
}  // namespace gstab
