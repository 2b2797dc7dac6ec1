// gstab.v1.Stabilizer over gRPC: each RPC is one line that hands the request to the Daemon and
// translates its status. Thread-safe (the Daemon is).
#pragma once

#include <algorithm>
#include <array>
#include <functional>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gstab/v1/stabilizer.grpc.pb.h"
#include "server/daemon.h"
#include "server/event_bus.h"
#include "server/metrics.h"
#include "server/unix_listener.h"

namespace gstab {

class StabilizerService final : public v1::Stabilizer::Service {
 public:
  // `peers`: credentials of unix-socket connections (RegisterBuffers checks who owns the
  // shared memory a worker names). `errors` (may be null): a counter labelled method and code,
  // which every call answered with an error adds to.
  // `max_event_streams`: WatchEvents streams one caller may have open at once (each holds a
  // thread and a queue of up to 1,024 events); `max_event_streams_total`, over every caller, of
  // which operators (root, gstabd's uid, --tls_operators, whatever jobs_by_uid says) keep
  // OperatorsEventStreams() to themselves, so that other callers' streams together never lock an
  // operator's `gstabctl events` out.
  // `max_calls`: the calls that may wait in gstabd (every call but KeepAlive, Detach, Identify
  // and WatchEvents, whose streams have caps of their own) one caller may have in flight at once,
  // each on a thread of gstabd's (a Step waiting for its job's other workers, say).
  // `streams` (may be null): a gauge labelled state, which EndStalledStreams sets: "open"
  // (WatchEvents streams), "waiting" (those whose write has waited kStreamWaiting or more for
  // its reader).
  StabilizerService(Daemon* daemon, EventBus* bus, const PeerTable* peers,
                    MetricFamily* errors = nullptr, int max_event_streams = kMaxEventStreams,
                    int max_calls = kMaxCallsPerCaller,
                    int max_event_streams_total = kMaxEventStreamsTotal,
                    absl::Duration event_write_timeout = absl::Seconds(60),
                    MetricFamily* streams = nullptr)
      : daemon_(daemon),
        bus_(bus),
        peers_(peers),
        errors_(errors),
        streams_(streams),
        max_event_streams_(max_event_streams),
        max_event_streams_total_(max_event_streams_total),
        event_write_timeout_(event_write_timeout),
        max_calls_(max_calls),
        identity_(NewIdentity()) {}
  static constexpr int kMaxEventStreams = 16;
  static constexpr int kMaxEventStreamsTotal = 256;
  static constexpr int kMaxCallsPerCaller = 2048;
  // The calls besides Step that a cap may refuse (RESOURCE_EXHAUSTED): those Counted
  // against --max_calls_per_caller, and WatchEvents (its streams' caps). Their error series
  // start at 0 (server.cc), so that an alert on their increase sees the first refusal.
  static constexpr std::array<const char*, 10> kCappedMethods = {
      "Attach",   "RegisterBuffers", "CreateRendezvous", "ImportState", "WatchEvents",
      "GetStats", "UpdateConfig",    "ExportState",      "ForgetJob",   "ListJobs"};

  grpc::Status Attach(grpc::ServerContext*, const v1::AttachRequest* request,
                      v1::AttachResponse* response) override;
  grpc::Status RegisterBuffers(grpc::ServerContext*, const v1::RegisterBuffersRequest* request,
                               v1::RegisterBuffersResponse* response) override;
  grpc::Status Step(grpc::ServerContext*, const v1::StepRequest* request,
                    v1::StepResponse* response) override;
  grpc::Status KeepAlive(grpc::ServerContext*, const v1::KeepAliveRequest* request,
                         v1::KeepAliveResponse* response) override;
  grpc::Status Detach(grpc::ServerContext*, const v1::DetachRequest* request,
                      v1::DetachResponse* response) override;
  grpc::Status GetStats(grpc::ServerContext*, const v1::GetStatsRequest* request,
                        v1::GetStatsResponse* response) override;
  grpc::Status UpdateConfig(grpc::ServerContext*, const v1::UpdateConfigRequest* request,
                            v1::UpdateConfigResponse* response) override;
  grpc::Status ExportState(grpc::ServerContext*, const v1::ExportStateRequest* request,
                           v1::ExportStateResponse* response) override;
  grpc::Status ImportState(grpc::ServerContext*, const v1::ImportStateRequest* request,
                           v1::ImportStateResponse* response) override;
  grpc::Status ListJobs(grpc::ServerContext*, const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override;
  grpc::Status ForgetJob(grpc::ServerContext*, const v1::ForgetJobRequest* request,
                         v1::ForgetJobResponse* response) override;
  // Ends the event streams whose write has waited event_write_timeout (their reader reads
  // nothing): cancelled, and a unix-socket connection shut down (over TCP the cancellation
  // alone ends the write, e2e_tcp_streams_test). Logged once each. Sets streams_'s series.
  // Called by the housekeeping, about every second.
  void EndStalledStreams(absl::Time now);
  // A write waiting this long for its reader counts as "waiting" in streams_: a reader that
  // keeps up takes an event within milliseconds.
  static constexpr absl::Duration kStreamWaiting = absl::Seconds(1);
  grpc::Status WatchEvents(grpc::ServerContext* context, const v1::WatchEventsRequest* request,
                           grpc::ServerWriter<v1::Event>* writer) override;
  grpc::Status CreateRendezvous(grpc::ServerContext*, const v1::CreateRendezvousRequest* request,
                                v1::CreateRendezvousResponse* response) override;
  grpc::Status Identify(grpc::ServerContext*, const v1::IdentifyRequest* request,
                        v1::IdentifyResponse* response) override;
  // This gstabd's instance (IdentifyResponse.instance), as its log names it.
  const std::string& instance() const { return identity_.instance(); }

 private:
  // The caller's uid when it came through the unix socket (SO_PEERCRED).
  std::optional<uid_t> PeerUid(const grpc::ServerContext* context) const;
  // Who calls: the socket's uid, or the name of a TCP client's certificate (empty when
  // it has none).
  Principal Caller(const grpc::ServerContext* context) const;
  // `status` as gRPC's, counted in errors_ unless OK.
  grpc::Status Answer(const char* method, const absl::Status& status) const;
  // A new instance's answer to Identify: a random instance, this release, this host, now.
  static v1::IdentifyResponse NewIdentity();
  // `call()`'s answer, the call counted among its caller's in flight meanwhile; refused with
  // RESOURCE_EXHAUSTED, uncalled, when the caller has max_calls_ in flight already.
  grpc::Status Counted(const char* method, const grpc::ServerContext* context,
                       const std::function<absl::Status()>& call);
  Daemon* daemon_;          // not owned
  EventBus* bus_;           // not owned
  const PeerTable* peers_;  // not owned
  MetricFamily* errors_;    // not owned; may be null
  MetricFamily* streams_;   // not owned; may be null
  const int max_event_streams_;
  const int max_event_streams_total_;
  const absl::Duration event_write_timeout_;
  // Of the total, kept for operators: one caller's cap, at most a quarter of the total.
  int OperatorsEventStreams() const {
    return std::min(max_event_streams_, max_event_streams_total_ / 4);
  }
  absl::Mutex streams_mu_;
  // Open WatchEvents streams by caller (Principal::ToString), and over every caller.
  std::map<std::string, int> event_streams_ ABSL_GUARDED_BY(streams_mu_);
  int event_streams_total_ ABSL_GUARDED_BY(streams_mu_) = 0;
  // Event streams in a write, since when (MonotonicNow), for EndStalledStreams: a write to a
  // reader that reads nothing waits for good. Over TCP the call's cancellation ends it
  // (e2e_tcp_streams_test); over the unix socket its connection is shut down too.
  struct Writing {
    absl::Time since;
    std::string peer;    // ServerContext::peer(): "fd:N" for a unix-socket connection
    std::string caller;  // Principal::ToString
    bool ended = false;
  };
  std::map<grpc::ServerContext*, Writing> writing_ ABSL_GUARDED_BY(streams_mu_);
  const int max_calls_;
  absl::Mutex calls_mu_;
  std::map<std::string, int> calls_ ABSL_GUARDED_BY(calls_mu_);  // by caller, as event_streams_
  const v1::IdentifyResponse identity_;
};

}  // namespace gstab
