// End-to-end: what gstabd refuses at registration, and why, against a real gstabd process. Every
// refusal names what was wrong, and leaves other jobs stepping.
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "common/step_progress.h"
#include "gtest/gtest.h"
#include "tests/server/faults_fixture.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

using testing::JobOptions;
using testing::StepWithToken;
using testing::TestWorker;

class E2eRegistrationTest : public testing::FaultsFixture {};

TEST_F(E2eRegistrationTest, EveryBadRegistrationGetsTheRightCodeAndAReason) {
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
  EXPECT_EQ((*client)->attach_response().step_timeout_ms(), 3000u);
  // An arena whose Allocate failed (a dtype out of range, unchecked) is refused before its
  // layout is read: the dtype indexed past the registration's buffers.
  GradientArena unallocated;
  unallocated.AddTensor("x", 16, static_cast<DType>(5));
  EXPECT_FALSE(unallocated.Allocate().ok());
  const absl::Status refused = (*client)->Register(unallocated);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_NE(refused.message().find("not allocated"), std::string::npos) << refused;

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
      {"tensor outside its buffer", [](auto* r) { r->mutable_tensors(0)->set_numel(1000); },
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
  AttachOptions many_nodes = JobOptions("many-nodes");
  many_nodes.world_size = many_nodes.node_count = 1025;
  many_nodes.rendezvous = "anything";
  absl::Status nodes_cap = (*stranger)->Attach(many_nodes);
  EXPECT_EQ(nodes_cap.code(), absl::StatusCode::kInvalidArgument) << nodes_cap;
  EXPECT_NE(nodes_cap.message().find("limit of 1024 nodes (--max_nodes)"), std::string::npos)
      << nodes_cap;
  absl::StatusOr<std::string> blob = (*stranger)->CreateRendezvous("many-nodes", 1025);
  EXPECT_EQ(blob.status().code(), absl::StatusCode::kInvalidArgument) << blob.status();
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
      // Finite, but no gradients' (re-expressed for other betas, it could become inf).
      {"huge second moment", [](auto* s) { s->mutable_groups(0)->set_v(1e300); }, "v is 1e+300"},
      {"huge mean", [](auto* s) { s->mutable_groups(0)->set_long_ema(1e100); }, "long_ema is"},
      {"t about to wrap", [](auto* s) { s->mutable_groups(0)->set_t(~uint64_t{0}); }, "2^62"},
      {"no step after the last", [](auto* s) { s->set_last_step(~uint64_t{0}); }, "last_step"},
      {"duplicate group", [](auto* s) { *s->add_groups() = s->groups(0); }, "duplicate group"},
      {"bad group name", [](auto* s) { s->mutable_groups(0)->set_name("a b"); }, "characters"},
      // Its source job's name is logged: no line of its own there.
      {"bad job name", [](auto* s) { s->set_job("x\nE1207 forged line"); }, "not a job name"},
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
  // Not a state at all: no bytes, or a message whose format version is 0.
  for (const auto& [bytes, message] :
       {std::pair<std::string, const char*>{"", "are empty"},
        {std::string("\x08\x00\x12\x01j", 5), "no format_version"}}) {
    const absl::Status s = (*observer)->ImportState(bytes);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(message), std::string::npos) << s;
  }
  absl::StatusOr<std::string> after = (*observer)->ExportState();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(*after, *exported);

  // None of it disturbed the other job.
  ExpectServing(worker->get(), 2);
}

// A refusal that quotes something huge the caller sent still reaches it (gRPC drops a status
// message past its metadata limit, 8 KiB): its head and tail, and how much was left out.
TEST_F(E2eRegistrationTest, ARefusalQuotingAHugeNameStillReachesTheCaller) {
  auto client = Client::Connect(daemon_->socket());
  ASSERT_TRUE(client.ok());
  const std::string huge(100000, 'j');
  v1::ForgetJobRequest request;
  request.set_job(huge);
  v1::ForgetJobResponse response;
  grpc::ClientContext ctx;
  const absl::Status s = FromGrpcStatus((*client)->stub()->ForgetJob(&ctx, request, &response));
  EXPECT_NE(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_FALSE(s.ok());
  EXPECT_LE(s.message().size(), 2200u);
  EXPECT_EQ(s.message().rfind("job name 'jjj", 0), 0u) << s.message().substr(0, 80);
  EXPECT_NE(s.message().find("bytes left out"), std::string::npos);
}

// Two local ranks of one job registering the same memory: each rank's step would count and
// scale it (twice the norm, the scale applied twice). The second is refused, naming both.
TEST_F(E2eRegistrationTest, TwoRanksOfAJobMayNotRegisterTheSameMemory) {
  AttachOptions rank0 = JobOptions("pair");
  rank0.local_world_size = 2;
  AttachOptions rank1 = rank0;
  rank1.local_rank = 1;
  auto first = TestWorker::Create(daemon_->socket(), rank0);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = Client::Connect(daemon_->socket());
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_TRUE((*second)->Attach(rank1).ok());
  const absl::Status shared = (*second)->Register((*first)->arena());
  EXPECT_EQ(shared.code(), absl::StatusCode::kInvalidArgument) << shared;
  EXPECT_NE(shared.message().find("tensor 0 ('a') shares memory with tensor 0 ('a') of local "
                                  "rank 0 of job 'pair'"),
            std::string::npos)
      << shared;
  // Its own memory is taken, and rank 0 registering again its own is no conflict.
  GradientArena own;
  own.AddTensor("a", 1000, DType::kFloat32);
  ASSERT_TRUE(own.Allocate().ok());
  EXPECT_TRUE((*second)->Register(own).ok());
  EXPECT_TRUE((*first)->client().Register((*first)->arena()).ok());
}

// A registration starts its progress word blank: a mark an earlier registration of the same
// memory left would read, at a step of the same number cut off, as a step gstabd scaled.
TEST_F(E2eRegistrationTest, ARegistrationStartsItsProgressWordBlank) {
  auto worker = TestWorker::Create(daemon_->socket(), JobOptions("blank"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  (*worker)->Fill(1, 1);
  ASSERT_TRUE((*worker)->client().Step(1).ok());
  const GradientArena& arena = (*worker)->arena();
  const auto* word = reinterpret_cast<const uint64_t*>(static_cast<const char*>(arena.data(0)) +
                                                       arena.tensor_bytes());
  EXPECT_EQ(__atomic_load_n(word, __ATOMIC_SEQ_CST), ScaledMark(1));
  ASSERT_TRUE((*worker)->client().Register(arena).ok());
  EXPECT_EQ(__atomic_load_n(word, __ATOMIC_SEQ_CST), 0u);
}

// A job's gradients are its own: the same memory registered in another job would be scaled by
// both, each job's statistics taking the other's scaled gradients. Refused while the first job
// holds it; taken once it let go.
TEST_F(E2eRegistrationTest, TwoJobsMayNotRegisterTheSameMemory) {
  auto first = TestWorker::Create(daemon_->socket(), JobOptions("mine"));
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = Client::Connect(daemon_->socket());
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_TRUE((*second)->Attach(JobOptions("theirs")).ok());
  const absl::Status shared = (*second)->Register((*first)->arena());
  EXPECT_EQ(shared.code(), absl::StatusCode::kFailedPrecondition) << shared;
  EXPECT_NE(shared.message().find("tensor 0 ('a') is memory job 'mine' registered: a job's "
                                  "gradients are its own"),
            std::string::npos)
      << shared;
  (*first)->Fill(1, 1);
  const std::vector<unsigned char> before = (*first)->Bytes();
  ASSERT_TRUE((*first)->client().Step(1).ok());
  EXPECT_NE((*first)->Bytes(), before);  // scaled by its own job
  ASSERT_TRUE((*first)->client().Detach().ok());
  EXPECT_TRUE((*second)->Register((*first)->arena()).ok());
}

// The progress word gstabd writes at every step is memory it writes, as the tensors are: one
// placed in another job's or another local rank's gradients is refused, naming both.
TEST_F(E2eRegistrationTest, AProgressWordInAnotherJobsOrRanksGradientsIsRefused) {
  AttachOptions rank0 = JobOptions("worded");
  rank0.local_world_size = 2;
  auto first = TestWorker::Create(daemon_->socket(), rank0);
  ASSERT_TRUE(first.ok()) << first.status();
  const v1::RegisterBuffersRequest theirs = (*first)->arena().RegistrationRequest();
  // A registration of its own memory whose progress word is in the first worker's tensor 'a'.
  GradientArena own;
  own.AddTensor("b", 1000, DType::kFloat32);
  ASSERT_TRUE(own.Allocate().ok());
  v1::RegisterBuffersRequest request = own.RegistrationRequest();
  *request.add_buffers() = theirs.buffers(0);
  request.mutable_progress()->set_buffer(1);
  request.mutable_progress()->set_offset(theirs.tensors(0).offset() * sizeof(float));
  AttachOptions rank1 = rank0;
  rank1.local_rank = 1;
  for (const AttachOptions& options : {JobOptions("wording"), rank1}) {
    auto client = Client::Connect(daemon_->socket());
    ASSERT_TRUE(client.ok()) << client.status();
    ASSERT_TRUE((*client)->Attach(options).ok());
    const absl::Status refused = (*client)->RegisterBuffers(request);
    EXPECT_FALSE(refused.ok());
    EXPECT_NE(refused.message().find(options.job == "worded"
                                         ? "its progress word shares memory with tensor 0 ('a') "
                                           "of local rank 0 of job 'worded'"
                                         : "its progress word is memory job 'worded' registered"),
              std::string::npos)
        << refused;
  }
  // Refused before anything was taken: the first worker registers its own memory again.
  EXPECT_TRUE((*first)->client().Register((*first)->arena()).ok());
}

// A registration replaces the worker's earlier one, and a refused one ends it too (the client
// has let go of it): the worker's steps are refused, saying why, and its earlier gradients are
// left as they are, until it registers again. Refused before the job (a tensor past its buffer)
// and by the job (a group's reduction).
TEST_F(E2eRegistrationTest, ARefusedRegistrationEndsTheEarlierOne) {
  auto worker = TestWorker::Create(daemon_->socket(), JobOptions("replaced"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  const v1::RegisterBuffersRequest good = (*worker)->arena().RegistrationRequest();
  v1::RegisterBuffersRequest outside = good;
  outside.mutable_tensors(0)->set_numel(1u << 30);
  v1::RegisterBuffersRequest reduction = good;
  for (v1::Tensor& t : *reduction.mutable_tensors()) {
    if (t.group() == "g") t.set_reduction(v1::REDUCTION_REPLICATED);  // sharded in the job
  }
  uint64_t step = 1;
  for (const auto& [bad, why] : {std::pair{outside, "outside buffer"},
                                 std::pair{reduction, "but this registration marks it"}}) {
    ExpectServing(worker->get(), step++);
    const absl::Status refused = (*worker)->client().RegisterBuffers(bad);
    ASSERT_FALSE(refused.ok());
    EXPECT_NE(refused.message().find(why), std::string::npos) << refused;
    (*worker)->Fill(step, 1);
    const std::vector<unsigned char> before = (*worker)->Bytes();
    // gstabd's answer (the client library refuses the step itself: below).
    Client& client = (*worker)->client();
    const absl::Status r = StepWithToken(&client, client.session(), step);
    EXPECT_EQ(r.code(), absl::StatusCode::kFailedPrecondition) << r;
    EXPECT_NE(r.message().find("its last registration was refused"), std::string::npos) << r;
    EXPECT_NE(r.message().find(why), std::string::npos) << r;
    EXPECT_EQ((*worker)->Bytes(), before);  // not scaled
    const absl::Status own = client.Step(step).status();
    EXPECT_EQ(own.code(), absl::StatusCode::kFailedPrecondition) << own;
    EXPECT_NE(own.message().find("the last registration through this client failed"),
              std::string::npos)
        << own;
    ASSERT_TRUE((*worker)->client().Register((*worker)->arena()).ok());
  }
  ExpectServing(worker->get(), step);
  // A registration the client library refused before sending it (a name that is not UTF-8):
  // gstabd still holds the earlier one, which the client no longer steps.
  v1::RegisterBuffersRequest unsent = good;
  unsent.mutable_tensors(0)->set_name("\xff");
  Client& client = (*worker)->client();
  const absl::Status refused = client.RegisterBuffers(unsent);
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(StepWithToken(&client, client.session(), ++step).ok());  // gstabd's is in place
  const absl::Status own = client.Step(++step).status();
  EXPECT_EQ(own.code(), absl::StatusCode::kFailedPrecondition) << own;
  EXPECT_NE(own.message().find("the last registration through this client failed"),
            std::string::npos)
      << own;
}

}  // namespace
}  // namespace gstab
