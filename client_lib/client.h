// gstab::Client: a training worker's connection to its node's gstabd.
//
//   auto client = Client::Connect("/run/gstab/gstabd.sock");
//   (*client)->Attach({.job = "llama-7b", .rank = 0, .world_size = 8, ...});
//   (*client)->Register(arena);                       // once, after allocating gradients
//   for (step...) { backward(); auto r = (*client)->Step(step); if (r->skip()) continue; ... }
//   (*client)->Detach();
//
// Every method returns the daemon's error as an absl::Status with the same code and message.
// While attached, a background thread renews the session's lease, so pauses between steps
// (evaluation, checkpointing) do not expire it. Methods are called one at a time, save that a
// monitoring thread may call GetStats (and a binding attach and register again, as Python's
// stats() does after a gstabd restart) while another thread's Step is under way.
#pragma once

#include <sys/types.h>

#include <algorithm>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "client_lib/arena.h"
#include "common/utf8.h"
#include "gstab/v1/stabilizer.grpc.pb.h"

namespace grpc::health::v1 {
class HealthCheckResponse;
}  // namespace grpc::health::v1

namespace gstab {

// grpc::Status -> absl::Status with the same code and message, and DoneWritten when gstabd
// said so (common/done_written.h).
absl::Status FromGrpcStatus(const grpc::Status& status);

struct AttachOptions {
  std::string job;
  uint32_t rank = 0;
  uint32_t world_size = 1;
  uint32_t local_rank = 0;
  uint32_t local_world_size = 1;
  // Multi-node jobs: this node's rank among the job's nodes, their count, and the rendezvous
  // blob global rank 0 got from CreateRendezvous. When node_count > 1 and the blob is empty,
  // the environment variable GSTAB_RENDEZVOUS (the blob in base64) is used.
  uint32_t node_rank = 0;
  uint32_t node_count = 1;
  std::string rendezvous;
  v1::PolicyConfig config;  // empty: the daemon's defaults (stabilize, v4)
  // An observer session (tools): GetStats, UpdateConfig, Export/ImportState of an existing
  // job without being one of its workers.
  bool observer = false;
};

class Client {
 public:
  // Connects to gstabd at `address`, its unix socket's path or its TCP port's HOST:PORT (mutual
  // TLS from the environment: client_lib/transport.h; empty: $GSTAB_SOCKET, else
  // /run/gstab/gstabd.sock), and waits up to `timeout` for it to serve. UNAVAILABLE, naming the
  // address, when no daemon answers, or only one that is stopping; PERMISSION_DENIED, naming
  // the socket's group, when this process may not use the socket; INVALID_ARGUMENT when a TLS
  // variable is unset, or GSTAB_CALL_TIMEOUT_S, GSTAB_KEEPALIVE_MS or GSTAB_KEEPALIVE_TIMEOUT_MS
  // is not a whole number in range (common/environment.h); FAILED_PRECONDITION when a TLS file
  // is not readable PEM, or when the server there is not gstabd.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(
      const std::string& address, absl::Duration timeout = absl::Seconds(10));
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Attaching again, once the new attach has succeeded, ends the earlier session (its
  // registration with it): register again. A failed attach leaves the earlier one as it was,
  // unless gstabd took it without answering in time (see gstab_attach).
  // Attach and Detach take turns: a monitoring thread's attach that overlaps another thread's
  // attach or detach waits for it.
  absl::Status Attach(const AttachOptions& options);
  // Unique in this process for its lifetime (unlike the object's address, which a later client
  // can reuse).
  uint64_t id() const { return id_; }
  // Global rank 0 of a multi-node job, before anyone attaches: a new rendezvous blob (opaque
  // bytes) to broadcast to every worker of the job.
  // `cuda`: the job registers GPU gradients (cuda_ipc), so the blob carries an NCCL id too.
  absl::StatusOr<std::string> CreateRendezvous(const std::string& job, uint32_t node_count,
                                               bool cuda = false);
  // Which gstabd answers (IdentifyResponse): workers that get the same instance share a node.
  // UNIMPLEMENTED from a gstabd of an earlier release.
  absl::StatusOr<v1::IdentifyResponse> Identify();
  // FAILED_PRECONDITION when `arena` is not allocated.
  absl::Status Register(const GradientArena& arena);
  // `response` (may be null) receives gstabd's answer: the job's groups and, for cuda_ipc
  // buffers, the results buffer.
  // `registration` (may be null) receives the number of the registration gstabd took (see
  // Registration).
  absl::Status RegisterBuffers(v1::RegisterBuffersRequest request,
                               v1::RegisterBuffersResponse* response = nullptr,
                               uint64_t* registration = nullptr);
  // Numbers this client's registrations: each attach, detach and registration sent (whatever
  // its outcome) moves it on, so a registration's number stays the current one only as long as
  // gstabd still steps that registration in this client's session (CudaGradients::Step refuses
  // a step of buffers another registration replaced, whose results buffer gstabd has freed).
  uint64_t Registration() const {
    absl::MutexLock lock(&registration_mu_);
    return registration_;
  }
  // A registration through this client failed (`why`; OK: it did not complete), wherever it
  // did: the client has let go of its earlier one, and refuses Steps (FAILED_PRECONDITION,
  // naming `why`) until a registration succeeds or it attaches again. RegisterBuffers calls it;
  // so do registrations that fail before it or after it (CudaGradients::Register, the C ABI's
  // checks).
  // Returns the number (Registration) it moved this client's registrations on to.
  uint64_t RegistrationFailed(const absl::Status& why) noexcept;
  // Stabilizes the registered gradients in place; returns once they are rescaled (CPU backend).
  // `ready_value`: cuda_ipc registrations (CudaGradients::Step sets it), see StepRequest.
  // DATA_LOSS when gstabd went away (killed, say) after it had begun to scale them, or, for
  // a registration without a progress word (RegisterBuffersRequest.progress), when it may have:
  // the step must not be retried on them. After UNAVAILABLE or UNAUTHENTICATED they are as they
  // were. FAILED_PRECONDITION, sending nothing, after a registration failed (until one succeeds
  // or the client attaches again).
  absl::StatusOr<v1::StepResponse> Step(uint64_t step, uint32_t ready_value = 0);
  // Whether `step_status` (a Step's) is DATA_LOSS because gstabd, sent the step, did not answer
  // (within the call timeout, or the connection's pings went unanswered): stopped or stuck, it
  // may still scale the gradients when it runs again.
  static bool StepUnanswered(const absl::Status& step_status);
  absl::Status Detach();
  absl::StatusOr<v1::GetStatsResponse> GetStats();
  absl::StatusOr<v1::UpdateConfigResponse> UpdateConfig(const v1::PolicyConfig& update);
  absl::StatusOr<std::string> ExportState();
  // `response` (may be null) receives gstabd's answer: the groups imported, and those no
  // worker registers now. `keep_config`: the job keeps its configuration
  // (ImportStateRequest.keep_config).
  absl::Status ImportState(const std::string& state, v1::ImportStateResponse* response = nullptr,
                           bool keep_config = false);
  // gstabd's jobs, and what drops one no worker uses: calls of no session, each with its
  // translated errors (a gstabd that did not answer, one that went).
  absl::StatusOr<v1::ListJobsResponse> ListJobs(const v1::ListJobsRequest& request);
  absl::StatusOr<v1::ForgetJobResponse> ForgetJob(const std::string& job);
  // The standard health check: OK when the daemon serves, UNAVAILABLE when it does not
  // (DEADLINE_EXCEEDED when it has not answered within `timeout`).
  absl::Status CheckHealth(absl::Duration timeout = absl::Seconds(5));

  // What learns that the session's gstabd is gone: called on a client's keep-alive thread, with
  // its id(), when another gstabd than the one that held the session answers that it does not
  // know it (UNAUTHENTICATED, and Identify names another instance: a restart; both gstabds
  // must have answered Identify), or a keep-alive finds no gstabd and its process has exited
  // (watched by a pidfd; where this process cannot see it, over TCP or from another pid
  // namespace: none has answered for 20 s, longer than a stop usually refuses calls before it
  // exits), and again at each keep-alive while that lasts; also on Attach's thread, when an
  // attach is answered by another gstabd than the one that held the earlier session. Not when
  // the gstabd that held the session ended it (an expired lease): that one releases the
  // session's steps itself. One for the process (null: none); CudaGradients sets it, to release
  // streams that wait for a step gstabd will never finish. It must return within a keep-alive
  // period (and not block an attach).
  using DaemonLostHandler = void (*)(uint64_t client_id);
  static void SetDaemonLostHandler(DaemonLostHandler handler);

  // Copies, read under a lock: a binding may attach again on one thread (Python's stats()
  // after a gstabd restart) while another steps.
  v1::AttachResponse attach_response() const {
    absl::MutexLock lock(&session_mu_);
    return attached_;
  }
  std::string session() const {
    absl::MutexLock lock(&session_mu_);
    return attached_.session();
  }
  v1::Stabilizer::Stub* stub() { return stub_.get(); }

 private:
  Client(std::shared_ptr<grpc::Channel> channel, std::string target);
  struct KeepAlive;
  // Calls the daemon-lost handler, if any, for this client.
  void TellDaemonLost() const;
  void StopKeepAlive();
  // Starts a thread that keeps a session alive once given it: RESOURCE_EXHAUSTED when it
  // cannot.
  absl::StatusOr<std::unique_ptr<KeepAlive>> StartKeepAlive();
  // Stops `k`'s thread and waits for it.
  static void StopKeepAlive(KeepAlive* k);
  // FAILED_PRECONDITION unless attached.
  absl::Status NeedSession() const;
  // The standard health check's answer, by `deadline`.
  grpc::Status AskHealth(absl::Time deadline, grpc::health::v1::HealthCheckResponse* response);
  // One unary call of the Stabilizer service, its status translated; it waits for gstabd at
  // most call_timeout_ (or `timeout`, when shorter).
  template <typename Request, typename Response>
  absl::StatusOr<Response> Call(grpc::Status (v1::Stabilizer::Stub::*method)(grpc::ClientContext*,
                                                                             const Request&,
                                                                             Response*),
                                const Request& request,
                                absl::Duration timeout = absl::InfiniteDuration()) {
    // Text that is not UTF-8 is refused here, naming the field, rather than sent: protobuf
    // would log an error to the caller's stderr, and gstabd answer a bare INTERNAL.
    if (FirstNonUtf8Field(request).has_value()) return Unreadable(request);
    ReconnectIfBackingOff();
    grpc::ClientContext ctx;
    const absl::Duration wait = std::min(timeout, CallTimeout());
    const absl::Time deadline = absl::Now() + wait;
    ctx.set_deadline(absl::ToChronoTime(deadline));
    Response response;
    const grpc::Status answer = (stub_.get()->*method)(&ctx, request, &response);
    last_answer_ = answer;
    last_unanswered_ = Unanswered(answer, deadline);
    absl::Status s = FromGrpcStatus(answer);
    if (absl::IsInternal(s) && s.message().empty()) s = Unreadable(request);
    // No call is cancelled here: a CANCELLED comes from gstabd's server stopping under the call.
    if (absl::IsCancelled(s)) s = StoppedUnderCall(s);
    if (absl::IsDeadlineExceeded(s) && absl::Now() >= deadline) s = NoAnswer(wait);
    if (absl::IsUnavailable(s)) s = Unreachable(s);
    if ((absl::IsUnknown(s) || absl::IsInternal(s)) && CutOff(answer)) s = ConnectionLost(answer);
    if (absl::IsUnavailable(s)) Reconnect();
    if (!s.ok()) return s;
    return response;
  }
  // gstabd did not answer (it restarts, say): connects again at once, waiting up to 200 ms,
  // rather than after gRPC's connection backoff (up to 2 minutes), which would keep the worker
  // waiting long after a new gstabd serves.
  void Reconnect();
  // Reconnect, when the channel still waits out its connection backoff (gstabd was gone a
  // while): the call would fail at once, though a gstabd may serve again by now.
  void ReconnectIfBackingOff();
  // UNAVAILABLE for a call gstabd's stop cancelled (`cancelled`): gstabd is going away, as when
  // it refuses a call while it stops.
  static absl::Status StoppedUnderCall(const absl::Status& cancelled);
  // gRPC's bare INTERNAL for a request gstabd could not parse: INVALID_ARGUMENT naming the field
  // that is not UTF-8, when one is not.
  static absl::Status Unreadable(const google::protobuf::Message& request);
  // DEADLINE_EXCEEDED for a call gstabd did not answer within `waited` (call_timeout_, or the
  // call's own shorter timeout).
  static absl::Status NoAnswer(absl::Duration waited);
  // gRPC's own UNAVAILABLE (the connection: "Socket closed", "failed to connect ...") says
  // which gstabd and what to do; gstabd's own UNAVAILABLE is kept.
  absl::Status Unreachable(const absl::Status& unavailable) const;
  // UNAVAILABLE for a connection lost under a call in gRPC's other words (UNKNOWN "Stream
  // removed", INTERNAL "Received RST_STREAM"), which gstab.h does not give its callers.
  absl::Status ConnectionLost(const grpc::Status& answer) const;
  // Whether a call that failed so may have been running in gstabd when it ended: the
  // connection went (gstabd killed, or crashed), or gstabd's stop cancelled it. A call that
  // never left (no connection to make it on) and gstabd's own refusals did not run.
  bool CutOff(const grpc::Status& answer) const;
  struct ProgressWord {
    // RegisterBuffersRequest.progress of the arena registered last, mapped on its own: the
    // arena may go before the client. Null for other registrations.
    std::shared_ptr<const uint64_t> word;
    bool marked = false;  // gstabd marked it at a step since it was registered
  };
  // Step's error for a step CutOff: from the progress word, when there is one, whether gstabd
  // had begun to scale the gradients (DATA_LOSS) or not (`error`, to be retried).
  absl::Status StepCutOff(uint64_t step, const absl::Status& error,
                          const ProgressWord& progress) const;
  // Whether an UNAVAILABLE's message is gRPC's about the connection to this gstabd, rather
  // than gstabd's own.
  bool FromTransport(absl::string_view message) const;
  // Whether a call that failed with `answer` was sent to gstabd and not answered: the client's
  // wait ran out (by `deadline`) on a connection that was up, or gstabd stopped answering the
  // connection's pings while the call was in flight. Stopped or stuck, gstabd may still take it
  // when it runs again.
  bool Unanswered(const grpc::Status& answer, absl::Time deadline) const;

  const uint64_t id_;
  const pid_t owner_;  // the process that made it (a forked child leaves it alone)
  std::shared_ptr<grpc::Channel> channel_;
  std::string target_;
  std::unique_ptr<v1::Stabilizer::Stub> stub_;
  mutable absl::Mutex session_mu_;
  v1::AttachResponse attached_ ABSL_GUARDED_BY(session_mu_);
  // The calling thread's last call's answer, untranslated, and whether that call reached gstabd
  // and got no answer (see Unanswered): read right after the call it tells of, per thread, so
  // that a call of another thread (a monitoring thread's stats while a step waits) neither
  // overwrites it nor races with it.
  static thread_local grpc::Status last_answer_;
  static thread_local bool last_unanswered_;
  // Why the last registration failed, if it did (RegistrationFailed): Steps are refused until
  // one succeeds. gstabd lets go of the earlier registration when it refuses one, but not for a
  // failure before it (the library's own checks, the per-caller call cap, an unanswered call),
  // where it may still hold the earlier one, or have taken the new one.
  // Under a lock, with the progress word: a client's calls come one at a time (gstab.h), but a
  // binding may make them from different threads (Python's stats() attaching and registering
  // again on a monitoring thread, between two steps of the training thread).
  mutable absl::Mutex registration_mu_;
  bool registration_failed_ ABSL_GUARDED_BY(registration_mu_) = false;
  std::string registration_failure_ ABSL_GUARDED_BY(registration_mu_);  // why, if kept
  int registering_ ABSL_GUARDED_BY(registration_mu_) = 0;  // RegisterBuffers calls under way
  ProgressWord progress_ ABSL_GUARDED_BY(registration_mu_);
  uint64_t registration_ ABSL_GUARDED_BY(registration_mu_) = 0;
  // How long a call waits for gstabd's answer (a frozen gstabd must not hold a worker for good):
  // five minutes until attached, then beyond the longest a step can take by gstabd's step
  // timeout (its local and cross-node waits, each bounded by it); $GSTAB_CALL_TIMEOUT_S, when
  // set, instead.
  absl::Duration call_timeout_ ABSL_GUARDED_BY(session_mu_) = absl::Minutes(5);
  bool call_timeout_set_ ABSL_GUARDED_BY(session_mu_) = false;
  absl::Duration CallTimeout() const {
    absl::MutexLock lock(&session_mu_);
    return call_timeout_;
  }
  // The thread that keeps a session alive (a KeepAlive call every third of its lease). It is
  // started before the attach that makes the session, and waits for it (`start`).
  struct KeepAlive {
    absl::Notification start;  // session and period are set, or stop is notified
    absl::Notification stop;
    std::string session;
    absl::Duration period;
    absl::Mutex mu;
    grpc::ClientContext* call ABSL_GUARDED_BY(mu) = nullptr;  // in flight
    // The instance of the gstabd that holds the session, once it said (empty: a gstabd that
    // cannot say, or not yet known).
    std::string holder ABSL_GUARDED_BY(mu);
    std::thread thread;
  };
  // Held by Attach and Detach, which replace the session and its keep-alive thread: two at once
  // would join one thread twice, or drop a running one (std::terminate).
  absl::Mutex attach_mu_;
  std::unique_ptr<KeepAlive> keepalive_;  // attached_'s session's; changed under attach_mu_
};

}  // namespace gstab
