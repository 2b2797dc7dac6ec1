// End-to-end: thousands of malformed requests, every RPC (the peers' rendezvous store's too),
// against a real gstabd. Each starts from a valid request (a worker's own, with its live
// session) and has a few fields set to values a buggy or hostile client could send: boundary
// and non-finite numbers, unknown enum values, long, empty or foreign names, random bytes, and
// nested messages (a job's exported state, a rendezvous blob) mutated the same way. gstabd must
// answer each with a status that says what was wrong, never crash or hang, and leave another
// job's statistics alone.
//
// Checkpoint files found at start are mutated the same way.
//
// Deterministic: the seeds are fixed, and a failure prints the request that caused it.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "tests/server/proto_mutator.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using testing::DaemonProcess;
using testing::JobOptions;
using testing::Mutator;
using testing::TempDir;
using testing::TestWorker;

// A unary RPC of `stub`, for a request of its type given as a Message.
template <typename Stub, typename Request, typename Response>
std::function<grpc::Status(grpc::ClientContext*, const Message&)> Call(
    Stub* stub, grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&, Response*)) {
  return [stub, method](grpc::ClientContext* c, const Message& m) {
    Response out;
    return (stub->*method)(c, static_cast<const Request&>(m), &out);
  };
}

class E2eFuzzTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = DaemonProcess::Start(
        dir_.path(), {"--lease_ms=3000", "--step_timeout_ms=300", "--peer_listen=127.0.0.1:0",
                      "--max_tensors=1000", "--max_jobs=64"});
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::make_unique<DaemonProcess>(*std::move(d));
  }

  TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(E2eFuzzTest, MalformedRequestsGetAReasonAndLeaveOtherJobsAlone) {
  auto bystander = TestWorker::Create(daemon_->socket(), JobOptions("bystander"));
  ASSERT_TRUE(bystander.ok()) << bystander.status();
  (*bystander)->Fill(1, 1);
  ASSERT_TRUE((*bystander)->client().Step(1).ok());
  absl::StatusOr<std::string> bystander_state = (*bystander)->client().ExportState();
  ASSERT_TRUE(bystander_state.ok());

  // The worker whose requests are mutated, attached again whenever a request ended its session.
  std::unique_ptr<TestWorker> target;
  v1::JobState state;
  auto attach_target = [&] {
    target.reset();
    auto t = TestWorker::Create(daemon_->socket(), JobOptions("fuzzed"));
    ASSERT_TRUE(t.ok()) << t.status();
    target = *std::move(t);
    target->Fill(1, 2);
    (void)target->client().Step(1000000);  // the job's steps go on from a high number
    absl::StatusOr<std::string> exported = target->client().ExportState();
    ASSERT_TRUE(exported.ok());
    ASSERT_TRUE(state.ParseFromString(*exported));
  };
  attach_target();
  auto tools = Client::Connect(daemon_->socket());
  ASSERT_TRUE(tools.ok());
  absl::StatusOr<std::string> blob = (*tools)->CreateRendezvous("fuzzed-nodes", 2);
  ASSERT_TRUE(blob.ok()) << blob.status();
  v1::RendezvousInfo rendezvous;
  ASSERT_TRUE(rendezvous.ParseFromString(*blob));

  // GSTAB_FUZZ_SEED and GSTAB_FUZZ_ROUNDS explore further than the fixed run.
  const char* seed = getenv("GSTAB_FUZZ_SEED");
  const char* rounds = getenv("GSTAB_FUZZ_ROUNDS");
  const uint64_t kSeed = seed != nullptr ? std::strtoull(seed, nullptr, 10) : 20261204;
  const int kRounds = rounds != nullptr ? std::atoi(rounds) : 120;
  std::printf("seed %llu, %d rounds\n", static_cast<unsigned long long>(kSeed), kRounds);
  Mutator mutate(kSeed, {});
  auto live_strings = [&] {
    return std::vector<std::string>{"fuzzed",
                                    "fuzzed-attach",
                                    "fuzzed-nodes",
                                    target->client().session(),
                                    target->arena().shm_name(),
                                    "g",
                                    "a",
                                    "big",
                                    rendezvous.token(),
                                    "mesh/0"};
  };
  mutate.set_strings(live_strings());
  v1::Stabilizer::Stub* stub = (*tools)->stub();
  std::unique_ptr<v1::Rendezvous::Stub> store = v1::Rendezvous::NewStub(
      grpc::CreateChannel(rendezvous.store_address(), grpc::InsecureChannelCredentials()));
  struct Rpc {
    const char* name;
    std::function<std::unique_ptr<Message>()> make;  // a valid request
    std::function<grpc::Status(grpc::ClientContext*, const Message&)> call;
  };
  auto with_session = [&](auto request) {
    request.set_session(target->client().session());
    return std::unique_ptr<Message>(new decltype(request)(request));
  };
  const std::vector<Rpc> rpcs = {
      {"Attach",
       [&] {
         auto r = std::make_unique<v1::AttachRequest>();
         r->set_job("fuzzed-attach");
         r->set_world_size(1);
         r->set_local_world_size(1);
         r->set_node_count(1);
         if (mutate.Below(3) == 0) {  // a job across nodes, its blob mutated too
           v1::RendezvousInfo info = rendezvous;
           mutate.Mutate(&info, 2);
           info.set_store_address(rendezvous.store_address());  // never dial elsewhere
           r->set_job("fuzzed-nodes");
           r->set_node_count(2);
           r->set_world_size(2);
           r->set_rendezvous(info.SerializeAsString());
         }
         return r;
       },
       Call(stub, &v1::Stabilizer::Stub::Attach)},
      {"RegisterBuffers", [&] { return with_session(target->arena().RegistrationRequest()); },
       Call(stub, &v1::Stabilizer::Stub::RegisterBuffers)},
      {"Step",
       [&] {
         v1::StepRequest r;
         r.set_step(2000000 + mutate.Below(1000));
         return with_session(r);
       },
       Call(stub, &v1::Stabilizer::Stub::Step)},
      {"UpdateConfig", [&] { return with_session(v1::UpdateConfigRequest()); },
       Call(stub, &v1::Stabilizer::Stub::UpdateConfig)},
      {"ImportState",
       [&] {
         v1::JobState s = state;
         mutate.Mutate(&s, 1 + static_cast<int>(mutate.Below(3)));
         v1::ImportStateRequest r;
         r.set_state(s.SerializeAsString());
         return with_session(r);
       },
       Call(stub, &v1::Stabilizer::Stub::ImportState)},
      {"GetStats", [&] { return with_session(v1::GetStatsRequest()); },
       Call(stub, &v1::Stabilizer::Stub::GetStats)},
      {"ExportState", [&] { return with_session(v1::ExportStateRequest()); },
       Call(stub, &v1::Stabilizer::Stub::ExportState)},
      {"KeepAlive", [&] { return with_session(v1::KeepAliveRequest()); },
       Call(stub, &v1::Stabilizer::Stub::KeepAlive)},
      {"ListJobs", [&] { return std::make_unique<v1::ListJobsRequest>(); },
       Call(stub, &v1::Stabilizer::Stub::ListJobs)},
      {"CreateRendezvous",
       [&] {
         auto r = std::make_unique<v1::CreateRendezvousRequest>();
         r->set_job("fuzzed-nodes");
         r->set_node_count(2);
         return r;
       },
       Call(stub, &v1::Stabilizer::Stub::CreateRendezvous)},
      {"ForgetJob",
       [&] {
         auto r = std::make_unique<v1::ForgetJobRequest>();
         r->set_job("fuzzed-nodes");
         return r;
       },
       Call(stub, &v1::Stabilizer::Stub::ForgetJob)},
      {"WatchEvents", [&] { return std::make_unique<v1::WatchEventsRequest>(); },
       [&](grpc::ClientContext* c, const Message& m) {
         // A followed stream stays open for new events: read what comes within 300 ms.
         const auto& request = static_cast<const v1::WatchEventsRequest&>(m);
         c->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
         auto reader = stub->WatchEvents(c, request);
         v1::Event e;
         while (reader->Read(&e)) {
         }
         const grpc::Status s = reader->Finish();
         const bool open =
             request.follow() && s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
         return open ? grpc::Status::OK : s;
       }},
      // The store other nodes' gstabd use (--peer_listen), under the rendezvous' token.
      {"StoreSet",
       [&] {
         auto r = std::make_unique<v1::StoreSetRequest>();
         r->set_token(rendezvous.token());
         r->set_key("fuzz");
         r->set_value("1");
         return r;
       },
       Call(store.get(), &v1::Rendezvous::Stub::StoreSet)},
      {"StoreGet",
       [&] {
         auto r = std::make_unique<v1::StoreGetRequest>();
         r->set_token(rendezvous.token());
         r->set_key("fuzz");
         return r;
       },
       Call(store.get(), &v1::Rendezvous::Stub::StoreGet)},
      {"StoreWait",
       [&] {
         auto r = std::make_unique<v1::StoreWaitRequest>();
         r->set_token(rendezvous.token());
         r->add_keys("fuzz");
         r->set_timeout_ms(100);
         return r;
       },
       [&](grpc::ClientContext* c, const Message& m) {
         // A wait for a key nobody sets lasts its timeout: give up on it after 300 ms.
         c->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
         v1::StoreWaitResponse out;
         const grpc::Status s =
             store->StoreWait(c, static_cast<const v1::StoreWaitRequest&>(m), &out);
         return s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ? grpc::Status::OK : s;
       }},
      {"Detach", [&] { return with_session(v1::DetachRequest()); },
       Call(stub, &v1::Stabilizer::Stub::Detach)},
  };

  int refused = 0, calls = 0;
  for (int round = 0; round < kRounds; ++round) {
    for (const Rpc& rpc : rpcs) {
      std::unique_ptr<Message> request = rpc.make();
      mutate.Mutate(request.get(), 1 + static_cast<int>(mutate.Below(3)));
      // Mostly under the live session, so that the rest of the request is read.
      const FieldDescriptor* session = request->GetDescriptor()->FindFieldByName("session");
      if (session != nullptr && mutate.Below(5) != 0) {
        request->GetReflection()->SetString(request.get(), session, target->client().session());
      }
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      const grpc::Status s = rpc.call(&ctx, *request);
      ++calls;
      const std::string what = std::string(rpc.name) + " (round " + std::to_string(round) +
                               "): " + request->ShortDebugString().substr(0, 2000);
      ASSERT_NE(s.error_code(), grpc::StatusCode::UNAVAILABLE) << "gstabd went away at " << what;
      ASSERT_NE(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << "gstabd hung at " << what;
      ASSERT_NE(s.error_code(), grpc::StatusCode::UNKNOWN) << s.error_message() << " at " << what;
      if (getenv("GSTAB_FUZZ_VERBOSE") != nullptr) {
        std::printf("%s %d %s\n", rpc.name, s.error_code(),
                    s.error_message().substr(0, 160).c_str());
      }
      if (!s.ok()) {
        ++refused;
        EXPECT_FALSE(s.error_message().empty()) << "no reason given at " << what;
        // gstabd's reason reached the client (not lost to gRPC's limit on metadata).
        EXPECT_EQ(s.error_message().find("metadata size exceeds"), std::string::npos)
            << s.error_message() << " at " << what;
      }
    }
    // A request may have ended the target's session or replaced its registration: start over.
    grpc::ClientContext alive;
    v1::KeepAliveRequest keep;
    keep.set_session(target->client().session());
    v1::KeepAliveResponse kept;
    if (!stub->KeepAlive(&alive, keep, &kept).ok() || round % 10 == 9) {
      attach_target();
      mutate.set_strings(live_strings());
    }
  }
  std::printf("%d malformed requests, %d refused\n", calls, refused);

  // The bystander's statistics are as they were, and it steps on.
  absl::StatusOr<std::string> after = (*bystander)->client().ExportState();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(*after, *bystander_state);
  (*bystander)->Fill(2, 1);
  absl::StatusOr<v1::StepResponse> r = (*bystander)->client().Step(2);
  EXPECT_TRUE(r.ok()) << r.status();
}

// Checkpoint files are input too: a disk error, an older release or a hand edit can leave any
// bytes in gstabd's state directory. gstabd starts with mutated and garbage checkpoints there,
// and each of their jobs attaches (restored, or afresh when its checkpoint is unusable) and
// steps, or is refused with a reason; gstabd then stops cleanly.
TEST(E2eFuzzCheckpointTest, MalformedCheckpointsLeaveGstabdServing) {
  TempDir dir;
  v1::JobState base;
  {
    auto d = DaemonProcess::Start(dir.path());
    ASSERT_TRUE(d.ok()) << d.status();
    auto w = TestWorker::Create(d->socket(), JobOptions("base"));
    ASSERT_TRUE(w.ok()) << w.status();
    (*w)->Fill(1, 1);
    ASSERT_TRUE((*w)->client().Step(1).ok());
    absl::StatusOr<std::string> exported = (*w)->client().ExportState();
    ASSERT_TRUE(exported.ok() && base.ParseFromString(*exported));
    EXPECT_EQ(d->Stop().value_or(-1), 0);
  }
  Mutator mutate(20261205, {"base", "ckpt0", "g", "a", "big"});
  constexpr int kFiles = 40;
  auto write = [&](const std::string& job, const std::string& bytes) {
    std::ofstream(dir.path() + "/state/" + job + ".jobstate", std::ios::binary) << bytes;
  };
  for (int i = 0; i < kFiles; ++i) {
    const std::string job = "ckpt" + std::to_string(i);
    v1::JobState state = base;
    state.set_job(job);
    mutate.Mutate(&state, 1 + static_cast<int>(mutate.Below(3)));
    std::string bytes = state.SerializeAsString();
    if (i % 8 == 7) bytes.resize(mutate.Below(bytes.size()));  // cut short
    write(job, bytes);
  }
  write("junk", std::string(1000, '\xff'));
  write("empty", "");
  v1::JobState newer = base;  // a newer release's, met after a rollback
  newer.set_job("newer");
  newer.set_format_version(2);
  write("newer", newer.SerializeAsString());

  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  int restored = 0, refused = 0;
  for (int i = 0; i < kFiles; ++i) {
    const std::string job = "ckpt" + std::to_string(i);
    auto w = TestWorker::Create(daemon->socket(), JobOptions(job));
    if (!w.ok()) {
      ++refused;
      EXPECT_NE(w.status().code(), absl::StatusCode::kUnavailable) << job << ": " << w.status();
      EXPECT_FALSE(w.status().message().empty()) << job;
      continue;
    }
    restored += (*w)->client().attach_response().restored();
    (*w)->Fill(1000, 1);
    absl::StatusOr<v1::StepResponse> r = (*w)->client().Step(1000);
    if (!r.ok()) {
      ++refused;
      EXPECT_NE(r.status().code(), absl::StatusCode::kUnavailable) << job << ": " << r.status();
      EXPECT_NE(r.status().code(), absl::StatusCode::kInternal) << job << ": " << r.status();
      EXPECT_FALSE(r.status().message().empty()) << job;
    }
  }
  for (const std::string job : {"junk", "empty", "newer"}) {
    // Set aside at start (kept for a look; a newer release's, for that release), so that its
    // job's next checkpoint does not overwrite it; the job starts afresh.
    const std::string file = job + ".jobstate";
    const std::string infix = job == "newer" ? ".newer-" : ".corrupt-";
    bool aside = false;
    for (const auto& e : std::filesystem::directory_iterator(dir.path() + "/state")) {
      aside |= e.path().filename().string().rfind(file + infix, 0) == 0;
    }
    EXPECT_TRUE(aside) << file << " was not set aside";
    EXPECT_FALSE(std::filesystem::exists(dir.path() + "/state/" + file)) << file;
    auto w = TestWorker::Create(daemon->socket(), JobOptions(job));
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_FALSE((*w)->client().attach_response().restored()) << job;
  }
  std::printf("%d checkpoints: %d restored, %d refused an attach or a step\n", kFiles, restored,
              refused);
  EXPECT_GT(restored, 0);  // the mutations leave many usable
  if (getenv("GSTAB_FUZZ_VERBOSE") != nullptr) std::printf("%s", daemon->Log().c_str());
  EXPECT_EQ(daemon->Stop().value_or(-1), 0);
}

}  // namespace
}  // namespace gstab
