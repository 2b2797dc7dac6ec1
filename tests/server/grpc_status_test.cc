// Status messages sent to clients: a long one keeps its head and tail within the cap, never
// cutting a UTF-8 character, and short ones pass unchanged.
#include "server/grpc_status.h"

#include <string>

#include "client_lib/client.h"
#include "common/done_written.h"
#include "gtest/gtest.h"

namespace gstab {
namespace {

// A restart's refusals reach the caller as UNAVAILABLE, with their message, but are not
// counted as errors (an alert on gstab_rpc_errors_total would fire at every rollout); other
// UNAVAILABLE answers (a node of the job lost) are.
TEST(GrpcStatusTest, AStoppingGstabdsRefusalsAreNotCountedAsErrors) {
  const absl::Status stopping = StoppingError("gstabd is shutting down");
  EXPECT_EQ(stopping.code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(CountsAsRpcError(stopping));
  const grpc::Status sent = ToGrpcStatus(stopping);
  EXPECT_EQ(sent.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(sent.error_message(), "gstabd is shutting down");
  EXPECT_TRUE(CountsAsRpcError(absl::UnavailableError("node 1 of job 'a' is gone")));
  EXPECT_TRUE(CountsAsRpcError(absl::InvalidArgumentError("step 3 is not after 5")));
  EXPECT_FALSE(CountsAsRpcError(absl::OkStatus()));
}

// gstabd's answers carry details (a google.rpc.Status of their code), by which a client tells
// them from gRPC's own errors, whatever their words: this one quotes a lost connection to
// another node, yet gstabd answered it, and a step it failed scaled nothing.
TEST(GrpcStatusTest, GstabdsAnswersSayTheyAreGstabds) {
  const grpc::Status s =
      ToGrpcStatus(absl::UnavailableError("broadcast: Read error: Connection reset by peer"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(s.error_details(), std::string("\x08\x0e", 2));
  EXPECT_EQ(ToGrpcStatus(absl::InvalidArgumentError("x")).error_details(),
            std::string("\x08\x03", 2));
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).error_details().empty());
}

// A CUDA step gstabd failed after queuing part of it says that its done word is written (the
// worker's stream must wait for it): in the details, as a google.rpc.Any of its type, beside the
// code; other answers say nothing of it.
TEST(GrpcStatusTest, AStepFailedAfterItsDoneWordWasQueuedSaysSo) {
  absl::Status failed = absl::InternalError("cudaLaunchKernel: too many resources requested");
  MarkDoneWritten(&failed);
  const grpc::Status sent = ToGrpcStatus(failed);
  EXPECT_EQ(sent.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(sent.error_details(),
            std::string("\x08\x0d\x1a\x1d\x0a\x1btype.gstab.dev/done-written", 33));
  EXPECT_TRUE(DetailsSayDoneWritten(sent.error_details()));
  // As the client library reads it.
  const absl::Status received = FromGrpcStatus(sent);
  EXPECT_EQ(received.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(received.message(), failed.message());
  EXPECT_TRUE(DoneWritten(received));
  EXPECT_FALSE(DoneWritten(FromGrpcStatus(ToGrpcStatus(absl::InternalError("x")))));
  EXPECT_FALSE(DoneWritten(FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "gone"))));
  absl::Status ok;
  MarkDoneWritten(&ok);  // a step taken needs no mark
  EXPECT_TRUE(ToGrpcStatus(ok).ok());
}

TEST(GrpcStatusTest, ShortMessagesPassUnchanged) {
  const grpc::Status s = ToGrpcStatus(absl::InvalidArgumentError("step 3 is bad"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "step 3 is bad");
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
}

TEST(GrpcStatusTest, ALongMessageKeepsItsHeadAndTail) {
  const std::string message = "job name '" + std::string(100000, 'j') + "' must be short";
  const std::string cut = CutStatusMessage(message);
  EXPECT_LE(cut.size(), kMaxStatusMessageBytes + 64);
  EXPECT_EQ(cut.rfind("job name 'jjj", 0), 0u);
  EXPECT_EQ(cut.substr(cut.size() - 15), "' must be short");
  EXPECT_NE(cut.find("bytes left out"), std::string::npos);
}

TEST(GrpcStatusTest, CutsFallBetweenUtf8Characters) {
  std::string accents = "x";  // then é, two bytes each: the natural cuts fall inside them
  for (int i = 0; i < 2000; ++i) accents += "\xc3\xa9";
  const std::string cut = CutStatusMessage(accents);
  EXPECT_LE(cut.size(), kMaxStatusMessageBytes + 64);
  const size_t note = cut.find(" [... ");
  ASSERT_NE(note, std::string::npos);
  EXPECT_EQ(note % 2, 1u) << "the head ends inside a character";
  const size_t tail = cut.find("...] ") + 5;
  EXPECT_EQ((cut.size() - tail) % 2, 0u) << "the tail starts inside a character";
  EXPECT_EQ(static_cast<unsigned char>(cut[tail]), 0xc3u);

  // Not UTF-8 (continuation bytes only): still cut to size.
  EXPECT_LE(CutStatusMessage(std::string(100000, '\x80')).size(), kMaxStatusMessageBytes + 64);
}

}  // namespace
}  // namespace gstab
