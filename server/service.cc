#include "server/service.h"

#include <grpc/grpc_security_constants.h>
#include <unistd.h>

#include <climits>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/monotonic_clock.h"
#include "glog/logging.h"
#include "server/grpc_status.h"
#include "server/registration.h"

namespace gstab {

grpc::Status StabilizerService::Answer(const char* method, const absl::Status& status) const {
  grpc::Status answer = ToGrpcStatus(status);
  if (CountsAsRpcError(status) && errors_ != nullptr) {
    errors_->Add(
        {method, absl::StatusCodeToString(static_cast<absl::StatusCode>(answer.error_code()))}, 1);
  }
  return answer;
}

grpc::Status StabilizerService::Counted(const char* method, const grpc::ServerContext* context,
                                        const std::function<absl::Status()>& call) {
  // Its connection gone, a call has no caller to count it against (Caller would take it for a
  // certificate without a name, and fill that cap), and nobody to answer.
  if (context->IsCancelled()) {
    return Answer(method, absl::CancelledError("the call was cancelled before gstabd took it"));
  }
  const std::string caller = Caller(context).ToString();
  {
    absl::MutexLock lock(&calls_mu_);
    int& in_flight = calls_[caller];
    if (in_flight >= max_calls_) {
      return Answer(method, absl::ResourceExhaustedError(absl::StrCat(
                                caller, " already has ", in_flight,
                                " calls waiting in gstabd (every call but KeepAlive, Detach, "
                                "Identify and WatchEvents), its cap a caller "
                                "(--max_calls_per_caller): let them end first (its jobs' other "
                                "workers step, or time out)")));
    }
    ++in_flight;
  }
  const absl::Status status = call();
  {
    absl::MutexLock lock(&calls_mu_);
    if (--calls_[caller] == 0) calls_.erase(caller);
  }
  return Answer(method, status);
}

std::optional<uid_t> StabilizerService::PeerUid(const grpc::ServerContext* context) const {
  std::optional<ucred> cred = peers_->Find(context->peer());
  // Looked at after the lookup: a connection's descriptor number is taken by the next one once
  // it is closed, and its entry then names that connection's process. A call whose connection
  // went (cancelled before its descriptor is closed) gets no uid: refused where one is needed,
  // and a certificate without a name (which owns no job) to Caller.
  if (cred.has_value() && !context->IsCancelled()) return cred->uid;
  return std::nullopt;  // TCP: a certificate holder
}

Principal StabilizerService::Caller(const grpc::ServerContext* context) const {
  if (std::optional<uid_t> uid = PeerUid(context)) return Principal::Uid(*uid);
  // TCP: mutual TLS, so a certificate of --tls_client_ca's, verified in the handshake. It is
  // named by the first of: its SPIFFE ID (gRPC reads one when the only URI in subjectAltName is
  // a valid spiffe:// one), its subject common name, "dns:" and its first DNS name, "email:"
  // and its first email address (both from subjectAltName, in the certificate's order). Each
  // kind keeps to names of its own: a common name that looks like a SPIFFE ID or one of the
  // other kinds' names nothing, so that no certificate passes for one of another kind (a DNS
  // name "ops" is not the common name "ops"); a certificate with none of these is nameless and
  // owns no job.
  const std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
  if (auth == nullptr) return Principal::Certificate("");
  const auto first = [&auth](const char* property) {
    const std::vector<grpc::string_ref> values = auth->FindPropertyValues(property);
    return values.empty() ? std::string() : std::string(values[0].data(), values[0].size());
  };
  if (std::string spiffe_id = first(GRPC_PEER_SPIFFE_ID_PROPERTY_NAME); !spiffe_id.empty()) {
    return Principal::Certificate(std::move(spiffe_id));
  }
  if (std::string common_name = first(GRPC_X509_CN_PROPERTY_NAME); !common_name.empty()) {
    for (const char* other_kind : {"spiffe:", "dns:", "email:"}) {
      if (absl::StartsWithIgnoreCase(common_name, other_kind)) return Principal::Certificate("");
    }
    return Principal::Certificate(std::move(common_name));
  }
  if (std::string dns = first(GRPC_PEER_DNS_PROPERTY_NAME); !dns.empty()) {
    return Principal::Certificate(absl::StrCat("dns:", dns));
  }
  const std::string email = first(GRPC_PEER_EMAIL_PROPERTY_NAME);
  return Principal::Certificate(email.empty() ? "" : absl::StrCat("email:", email));
}

grpc::Status StabilizerService::Attach(grpc::ServerContext* context,
                                       const v1::AttachRequest* request,
                                       v1::AttachResponse* response) {
  return Counted("Attach", context,
                 [&] { return daemon_->Attach(*request, response, Caller(context)); });
}

grpc::Status StabilizerService::RegisterBuffers(grpc::ServerContext* context,
                                                const v1::RegisterBuffersRequest* request,
                                                v1::RegisterBuffersResponse* response) {
  return Counted("RegisterBuffers", context,
                 [&] { return daemon_->RegisterBuffers(*request, response, PeerUid(context)); });
}

grpc::Status StabilizerService::Step(grpc::ServerContext* context, const v1::StepRequest* request,
                                     v1::StepResponse* response) {
  // The client's deadline (gRPC's infinite one, past absl's range, reads as none).
  const absl::Time deadline = context->deadline() == std::chrono::system_clock::time_point::max()
                                  ? absl::InfiniteFuture()
                                  : absl::FromChrono(context->deadline());
  return Counted("Step", context, [&] { return daemon_->Step(*request, response, deadline); });
}

grpc::Status StabilizerService::KeepAlive(grpc::ServerContext*, const v1::KeepAliveRequest* request,
                                          v1::KeepAliveResponse*) {
  return Answer("KeepAlive", daemon_->KeepAlive(*request));
}

grpc::Status StabilizerService::Detach(grpc::ServerContext*, const v1::DetachRequest* request,
                                       v1::DetachResponse*) {
  return Answer("Detach", daemon_->Detach(*request));
}

grpc::Status StabilizerService::GetStats(grpc::ServerContext* context,
                                         const v1::GetStatsRequest* request,
                                         v1::GetStatsResponse* response) {
  return Counted("GetStats", context, [&] { return daemon_->GetStats(*request, response); });
}

grpc::Status StabilizerService::UpdateConfig(grpc::ServerContext* context,
                                             const v1::UpdateConfigRequest* request,
                                             v1::UpdateConfigResponse* response) {
  return Counted("UpdateConfig", context,
                 [&] { return daemon_->UpdateConfig(*request, response); });
}

grpc::Status StabilizerService::ExportState(grpc::ServerContext* context,
                                            const v1::ExportStateRequest* request,
                                            v1::ExportStateResponse* response) {
  return Counted("ExportState", context, [&] { return daemon_->ExportState(*request, response); });
}

grpc::Status StabilizerService::ImportState(grpc::ServerContext* context,
                                            const v1::ImportStateRequest* request,
                                            v1::ImportStateResponse* response) {
  return Counted("ImportState", context, [&] { return daemon_->ImportState(*request, response); });
}

grpc::Status StabilizerService::ForgetJob(grpc::ServerContext* context,
                                          const v1::ForgetJobRequest* request,
                                          v1::ForgetJobResponse* response) {
  return Counted("ForgetJob", context,
                 [&] { return daemon_->ForgetJob(*request, response, Caller(context)); });
}

grpc::Status StabilizerService::ListJobs(grpc::ServerContext* context,
                                         const v1::ListJobsRequest* request,
                                         v1::ListJobsResponse* response) {
  return Counted("ListJobs", context,
                 [&] { return daemon_->ListJobs(*request, response, Caller(context)); });
}

grpc::Status StabilizerService::CreateRendezvous(grpc::ServerContext* context,
                                                 const v1::CreateRendezvousRequest* request,
                                                 v1::CreateRendezvousResponse* response) {
  return Counted("CreateRendezvous", context,
                 [&] { return daemon_->CreateRendezvous(*request, response, Caller(context)); });
}

v1::IdentifyResponse StabilizerService::NewIdentity() {
  v1::IdentifyResponse identity;
  std::random_device entropy;  // the kernel's random numbers: two starts never share one
  std::string instance;
  for (int i = 0; i < 4; ++i) absl::StrAppendFormat(&instance, "%08x", entropy());
  identity.set_instance(instance);
  identity.set_version(GSTAB_VERSION);
  char host[HOST_NAME_MAX + 1] = {};
  if (gethostname(host, sizeof(host) - 1) == 0) identity.set_host(host);
  identity.set_started_unix_ms(static_cast<uint64_t>(absl::ToUnixMillis(absl::Now())));
  return identity;
}

grpc::Status StabilizerService::Identify(grpc::ServerContext*, const v1::IdentifyRequest*,
                                         v1::IdentifyResponse* response) {
  *response = identity_;
  return grpc::Status::OK;
}

grpc::Status StabilizerService::WatchEvents(grpc::ServerContext* context,
                                            const v1::WatchEventsRequest* request,
                                            grpc::ServerWriter<v1::Event>* writer) {
  // A job that could not exist would stream nothing, silently (a misspelling).
  if (!request->job().empty()) {
    if (absl::Status s = ValidateJobName(request->job()); !s.ok()) return Answer("WatchEvents", s);
  }
  // Streams are counted, a caller's and all: each holds this thread and a queue, and one caller
  // must not take them all, nor every caller together gstabd's threads.
  const Principal principal = Caller(context);
  const std::string caller = principal.ToString();
  // (Operators by who they are: with --jobs_by_uid=false every caller acts on every job.)
  const int kept = daemon_->IsOperator(principal) ? 0 : OperatorsEventStreams();
  {
    absl::MutexLock lock(&streams_mu_);
    int& open = event_streams_[caller];
    if (open >= max_event_streams_) {
      return Answer("WatchEvents", absl::ResourceExhaustedError(absl::StrCat(
                                       caller, " already has ", open,
                                       " event streams open, gstabd's cap a "
                                       "caller (--max_event_streams): close one first")));
    }
    if (event_streams_total_ >= max_event_streams_total_ - kept) {
      if (open == 0) event_streams_.erase(caller);
      return Answer("WatchEvents",
                    absl::ResourceExhaustedError(absl::StrCat(
                        "gstabd has ", event_streams_total_,
                        " event streams open, its cap over every caller "
                        "(--max_event_streams_total)",
                        kept > 0 ? absl::StrCat(" less the ", kept, " it keeps for operators") : "",
                        ": try again once one has closed")));
    }
    ++open;
    ++event_streams_total_;
  }
  // Each subscriber reads from its own bounded queue, so a slow one never holds up the
  // pipeline; this thread only waits for its own queue and its own writes.
  // Without `follow`, the stream ends after the recent events (the subscription is closed
  // once they are queued), however many are published meanwhile.
  const std::shared_ptr<EventBus::Subscription> sub =
      bus_->Subscribe(request->job(), request->recent(), request->follow());
  v1::Event event;
  while (!context->IsCancelled()) {
    const EventBus::Subscription::Result r = sub->Next(&event, absl::Milliseconds(200));
    if (r == EventBus::Subscription::Result::kClosed) break;
    if (r == EventBus::Subscription::Result::kTimeout) continue;
    {
      absl::MutexLock lock(&streams_mu_);
      writing_[context] = Writing{MonotonicNow(), context->peer(), caller};
    }
    const bool written = writer->Write(event);
    {
      absl::MutexLock lock(&streams_mu_);
      writing_.erase(context);
    }
    if (!written) break;
  }
  bus_->Unsubscribe(sub);
  absl::MutexLock lock(&streams_mu_);
  --event_streams_total_;
  if (--event_streams_[caller] == 0) event_streams_.erase(caller);
  return grpc::Status::OK;
}

void StabilizerService::EndStalledStreams(absl::Time now) {
  absl::MutexLock lock(&streams_mu_);  // the stream's call runs until its entry is gone
  int waiting = 0;
  for (auto& [context, writing] : writing_) {
    if (!writing.ended && now - writing.since >= kStreamWaiting) ++waiting;
    if (writing.ended || now - writing.since < event_write_timeout_) continue;
    writing.ended = true;
    context->TryCancel();
    const bool unix_socket = peers_ != nullptr && peers_->Shutdown(writing.peer);
    LOG(WARNING) << "an event stream of " << writing.caller << " has taken no event for "
                 << absl::FormatDuration(now - writing.since)
                 << " (--event_write_timeout_s; a suspended `gstabctl events --follow`, or a "
                 << "client that never reads): ended"
                 << (unix_socket ? ", its connection shut down" : "");
  }
  if (streams_ != nullptr) {
    streams_->Set({"open"}, event_streams_total_);
    streams_->Set({"waiting"}, waiting);
  }
}

}  // namespace gstab
