// The client's reading of failed calls: which failures the transport made, which cut a call off
// under way, and what a Step cut off may have done to the gradients (Client's error helpers).
#include <grpcpp/grpcpp.h>

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "client_lib/client.h"
#include "common/step_progress.h"
#include "common/utf8.h"

namespace gstab {
absl::Status Client::StoppedUnderCall(const absl::Status& cancelled) {
  return absl::UnavailableError(absl::StrCat("gstabd stopped before it answered (",
                                             cancelled.message(),
                                             "); attach again after it restarts"));
}

absl::Status Client::Unreadable(const google::protobuf::Message& request) {
  if (std::optional<std::string> field = FirstNonUtf8Field(request)) {
    return absl::InvalidArgumentError(
        absl::StrCat(request.GetDescriptor()->name(), ".", *field,
                     " is not UTF-8 text: gstab's names and settings are UTF-8"));
  }
  return absl::InternalError("gstabd could not read the request (INTERNAL, with no message)");
}

absl::Status Client::NoAnswer(absl::Duration waited) {
  return absl::DeadlineExceededError(
      absl::StrCat("gstabd did not answer within ", absl::FormatDuration(waited),
                   " (stopped, or stuck?): its health check and log say more"));
}

namespace {

// gRPC's words for a connection that could not be made: a call failing so was never sent.
constexpr absl::string_view kNotConnected[] = {
    "failed to connect",     "Connection refused", "connections to all backends failing",
    "DNS resolution failed", "empty address list", "Stream refused",
    "REFUSED_STREAM"};
// Its words for a connection that went under a call.
constexpr absl::string_view kConnectionLost[] = {"Socket closed", "Connection reset", "Broken pipe",
                                                 "Endpoint read failed"};

bool ContainsAny(absl::string_view message, absl::Span<const absl::string_view> words) {
  return std::any_of(words.begin(), words.end(),
                     [&](absl::string_view w) { return absl::StrContains(message, w); });
}

}  // namespace

bool Client::FromTransport(absl::string_view message) const {
  // gstabd's own UNAVAILABLE may quote gRPC's words from another connection (a job's other
  // node), and then names the job.
  return (absl::StrContains(message, target_) || ContainsAny(message, kNotConnected) ||
          ContainsAny(message, kConnectionLost)) &&
         !absl::StrContains(message, "job '");
}

bool Client::CutOff(const grpc::Status& answer) const {
  // gstabd's own answers carry details (server/grpc_status.h): it ran the call to its end.
  if (!answer.error_details().empty()) return false;
  if (answer.error_code() == grpc::StatusCode::CANCELLED) return true;
  // Any other transport failure may have come mid-call, in whatever words and code its gRPC
  // release and transport use (UNAVAILABLE "GOAWAY received", "Transport closed"; INTERNAL
  // "Received RST_STREAM"; UNKNOWN "Stream removed"): unless it says the call never left, the
  // progress word decides. An INTERNAL without words is gRPC's refusal of a request gstabd
  // could not read (not run). An older gstabd's own UNAVAILABLE (without details) names the job;
  // its INTERNAL or UNKNOWN, a fault of its own, is taken as a cut-off too (the gradients are
  // then skipped where they might have been stepped).
  const grpc::StatusCode code = answer.error_code();
  const bool transport = code == grpc::StatusCode::UNAVAILABLE ||
                         code == grpc::StatusCode::UNKNOWN ||
                         (code == grpc::StatusCode::INTERNAL && !answer.error_message().empty());
  return transport && !ContainsAny(answer.error_message(), kNotConnected) &&
         !absl::StrContains(answer.error_message(), "job '");
}

bool Client::Unanswered(const grpc::Status& answer, absl::Time deadline) const {
  if (!answer.error_details().empty()) return false;  // gstabd's own answer
  if (answer.error_code() == grpc::StatusCode::UNAVAILABLE) {
    return absl::StrContains(answer.error_message(), "keepalive watchdog timeout");
  }
  // A connection not up by then (a frozen gstabd accepts it but never says it is ready) never
  // carried the call.
  return answer.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && absl::Now() >= deadline &&
         channel_->GetState(/*try_to_connect=*/false) == GRPC_CHANNEL_READY;
}

absl::Status Client::StepCutOff(uint64_t step, const absl::Status& error,
                                const ProgressWord& progress) const {
  const std::string why = absl::StrCat(" (", last_answer_.error_message(), ")");
  constexpr absl::string_view kSkip =
      ": skip this step (zero them) rather than step them again, then attach and register again "
      "once gstabd serves";
  // A mark of this step's is a marking gstabd's (at any step since registration): trusted.
  if (progress.word != nullptr) {
    const uint64_t mark = __atomic_load_n(progress.word.get(), __ATOMIC_SEQ_CST);
    if (mark == ScalingMark(step)) {
      return absl::DataLossError(
          absl::StrCat("gstabd at ", target_, " went away while it was scaling step ", step, why,
                       ": part of its gradients are scaled and the rest not", kSkip));
    }
    if (mark == ScaledMark(step)) {
      return absl::DataLossError(
          absl::StrCat("gstabd at ", target_, " went away after it scaled step ", step,
                       " and before its answer came", why,
                       ": the gradients are scaled, its results lost", kSkip));
    }
    // No mark says nothing of a gstabd not yet seen marking (one of an older release).
    if (progress.marked) {  // gstabd never touched them
      if (last_answer_.error_code() == grpc::StatusCode::UNAVAILABLE ||
          last_answer_.error_code() == grpc::StatusCode::CANCELLED) {
        return error;
      }
      // The connection failed in other words (INTERNAL, UNKNOWN): what gstab.h promises for a
      // step gstabd did not touch, which the bindings attach again after.
      return absl::UnavailableError(absl::StrCat(
          "the connection to gstabd at ", target_, " failed", why, " before it touched step ", step,
          "'s gradients: attach again once it serves, and step them then"));
    }
  }
  // gstabd's stop cancels calls only once no step may begin to scale (server.cc): such a step
  // was not run, or run to the end, or (its drain cut short) stopped before scaling. The
  // connection's going tells nothing.
  if (last_answer_.error_code() == grpc::StatusCode::CANCELLED) return error;
  return absl::DataLossError(absl::StrCat("gstabd at ", target_,
                                          " went away while it may have been scaling step ", step,
                                          why, ": part of its gradients may be scaled", kSkip));
}

absl::Status Client::ConnectionLost(const grpc::Status& answer) const {
  return absl::UnavailableError(absl::StrCat("the connection to gstabd at ", target_,
                                             " failed under the call (", answer.error_message(),
                                             "): it stopped or restarts; attach again once it "
                                             "serves"));
}

absl::Status Client::Unreachable(const absl::Status& unavailable) const {
  if (!FromTransport(unavailable.message())) return unavailable;
  return absl::UnavailableError(absl::StrCat("cannot reach gstabd at ", target_, " (",
                                             unavailable.message(),
                                             "): it stopped or restarts; attach again once it "
                                             "serves"));
}
}  // namespace gstab
