// Calls cut off under way, in whatever words gRPC gives the failure, and a step that meets
// another thread's registration: what the client library tells its caller. Against a fake
// server of gstabd's service, whose answers carry none of gstabd's error details (as a
// transport failure's, or an older gstabd's own answers, do).
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <tuple>

#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "client_lib/arena.h"
#include "client_lib/client.h"
#include "common/step_progress.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

using testing::JobOptions;
using testing::TempDir;

// Its Step and GetStats fail as `code` and `message` say (OK: they answer).
class FailingStabilizer final : public v1::Stabilizer::Service {
 public:
  grpc::StatusCode code = grpc::StatusCode::OK;
  std::string message;
  uint64_t* progress = nullptr;  // the worker's progress word, marked at a step answered OK
  std::atomic<absl::Notification*> hold_registration{nullptr};  // set: RegisterBuffers waits
  absl::Notification registering;                               // a held RegisterBuffers has come

  grpc::Status Attach(grpc::ServerContext*, const v1::AttachRequest*,
                      v1::AttachResponse* response) override {
    response->set_session("session");
    response->set_lease_ms(60000);
    response->set_step_timeout_ms(1000);
    return grpc::Status::OK;
  }
  grpc::Status RegisterBuffers(grpc::ServerContext*, const v1::RegisterBuffersRequest*,
                               v1::RegisterBuffersResponse*) override {
    if (absl::Notification* hold = hold_registration.load(); hold != nullptr) {
      registering.Notify();
      hold->WaitForNotification();
    }
    return grpc::Status::OK;
  }
  grpc::Status KeepAlive(grpc::ServerContext*, const v1::KeepAliveRequest*,
                         v1::KeepAliveResponse*) override {
    return grpc::Status::OK;
  }
  grpc::Status Detach(grpc::ServerContext*, const v1::DetachRequest*,
                      v1::DetachResponse*) override {
    return grpc::Status::OK;
  }
  grpc::Status Step(grpc::ServerContext*, const v1::StepRequest* request,
                    v1::StepResponse*) override {
    if (code == grpc::StatusCode::OK && progress != nullptr) {
      __atomic_store_n(progress, ScaledMark(request->step()), __ATOMIC_SEQ_CST);  // as gstabd
    }
    return grpc::Status(code, message);
  }
  grpc::Status GetStats(grpc::ServerContext*, const v1::GetStatsRequest*,
                        v1::GetStatsResponse*) override {
    return grpc::Status(code, message);
  }
};

// The fake serving on a unix socket, and a client attached to it with 16 floats registered.
class E2eClientCutOffTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string path = dir_.path() + "/fake.sock";
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("unix:" + path, grpc::InsecureServerCredentials());
    builder.RegisterService(&fake_);
    server_ = builder.BuildAndStart();
    grpc::EnableDefaultHealthCheckService(false);
    ASSERT_NE(server_, nullptr);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(path, absl::Seconds(5));
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
    ASSERT_TRUE(client_->Attach(JobOptions("cut")).ok());
    arena_.AddTensor("w", 16, DType::kFloat32);
    ASSERT_TRUE(arena_.Allocate().ok());
    ASSERT_TRUE(client_->Register(arena_).ok());
  }
  void TearDown() override {
    client_.reset();
    if (server_ != nullptr) server_->Shutdown();
  }
  // The next call fails as `code` and `message` say.
  void FailAs(grpc::StatusCode code, const std::string& message) {
    fake_.code = code;
    fake_.message = message;
  }

  TempDir dir_;
  FailingStabilizer fake_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Client> client_;
  GradientArena arena_;
  uint64_t step_ = 0;
};

// A step whose call ends in a transport failure may have been running in gstabd, whatever
// code gRPC gives the failure (UNAVAILABLE, INTERNAL "Received RST_STREAM", UNKNOWN "Stream
// removed"): the worker is told DATA_LOSS (skip the step), not a code gstab.h does not
// describe. A refusal (INVALID_ARGUMENT), and gRPC's bare INTERNAL for a request it could not
// read, come back as they are.
TEST_F(E2eClientCutOffTest, AStepCutOffInAnyOfGrpcsWordsIsDataLoss) {
  for (const auto& [code, message, expected] :
       {std::make_tuple(grpc::StatusCode::INTERNAL, "Received RST_STREAM with error code 2",
                        absl::StatusCode::kDataLoss),
        std::make_tuple(grpc::StatusCode::UNKNOWN, "Stream removed", absl::StatusCode::kDataLoss),
        std::make_tuple(grpc::StatusCode::UNAVAILABLE, "Socket closed",
                        absl::StatusCode::kDataLoss),
        std::make_tuple(grpc::StatusCode::INVALID_ARGUMENT, "refused",
                        absl::StatusCode::kInvalidArgument),
        std::make_tuple(grpc::StatusCode::INTERNAL, "", absl::StatusCode::kInternal)}) {
    FailAs(code, message);
    const absl::Status s = client_->Step(++step_).status();
    EXPECT_EQ(s.code(), expected) << message << ": " << s;
    if (expected == absl::StatusCode::kDataLoss) {
      EXPECT_TRUE(absl::StrContains(s.message(), "may be scaled")) << s;
    }
  }
  // Once gstabd has been seen marking the word, a cut-off that finds it unmarked for the step
  // touched nothing: UNAVAILABLE (attach again), whatever code gRPC gave the failure.
  fake_.progress = reinterpret_cast<uint64_t*>(static_cast<char*>(arena_.data(0)) +
                                               arena_.RegistrationRequest().progress().offset());
  FailAs(grpc::StatusCode::OK, "");
  ASSERT_TRUE(client_->Step(++step_).ok());
  for (const auto& [code, message] :
       {std::make_pair(grpc::StatusCode::INTERNAL, "Received RST_STREAM with error code 2"),
        std::make_pair(grpc::StatusCode::UNKNOWN, "Stream removed")}) {
    FailAs(code, message);
    const absl::Status s = client_->Step(++step_).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << message << ": " << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "before it touched step")) << s;
  }
}

// Any other call cut off so: UNAVAILABLE, what gstab.h says of a gstabd gone (the bindings
// attach again after it), not UNKNOWN or INTERNAL; said once, not wrapped twice. gRPC's bare
// INTERNAL stays what it is.
TEST_F(E2eClientCutOffTest, AnyOtherCallCutOffIsUnavailable) {
  for (const auto& [code, message, expected] :
       {std::make_tuple(grpc::StatusCode::INTERNAL, "Received RST_STREAM with error code 2",
                        absl::StatusCode::kUnavailable),
        std::make_tuple(grpc::StatusCode::UNKNOWN, "Stream removed",
                        absl::StatusCode::kUnavailable),
        std::make_tuple(grpc::StatusCode::INTERNAL, "", absl::StatusCode::kInternal)}) {
    FailAs(code, message);
    const absl::Status s = client_->GetStats().status();
    EXPECT_EQ(s.code(), expected) << message << ": " << s;
    if (expected == absl::StatusCode::kUnavailable) {
      EXPECT_TRUE(absl::StrContains(s.message(), "failed under the call")) << s;
      EXPECT_FALSE(absl::StrContains(s.message(), "cannot reach gstabd")) << s;
    }
  }
}

// A step while another thread's registration is under way is told so, not that the last
// registration failed.
TEST_F(E2eClientCutOffTest, AStepDuringAnotherThreadsRegistrationIsToldSo) {
  absl::Notification release;
  fake_.hold_registration = &release;
  std::thread registering([&] { EXPECT_TRUE(client_->Register(arena_).ok()); });
  EXPECT_TRUE(fake_.registering.WaitForNotificationWithTimeout(absl::Seconds(20)));
  const absl::Status during = client_->Step(++step_).status();
  EXPECT_EQ(during.code(), absl::StatusCode::kFailedPrecondition) << during;
  EXPECT_TRUE(
      absl::StrContains(during.message(), "a registration through this client is under way"))
      << during;
  release.Notify();
  registering.join();
  fake_.hold_registration = nullptr;
  EXPECT_TRUE(client_->Step(++step_).ok());  // once it has returned
}

}  // namespace
}  // namespace gstab
