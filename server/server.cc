#include "server/server.h"

#include <grpc/grpc.h>
#include <grpcpp/resource_quota.h>
#include <malloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/host_port.h"
#include "common/monotonic_clock.h"
#include "common/wire_limits.h"
#include "glog/logging.h"
#include "server/local_work.h"
#include "server/peer_tls.h"
#include "server/stderr_log.h"

namespace gstab {

namespace {

// How long gRPC's shutdown lets calls finish before it cancels them: enough for the answers of
// calls already ended (a drained step's "shutting down") to reach their clients on a loaded
// machine, where 100 ms was seen to cut one off.
constexpr absl::Duration kAnswerGrace = absl::Seconds(1);
// A TCP connection (--listen, --peer_listen) that has not finished its TLS handshake by then is
// closed: gRPC's own default, two minutes, lets anyone who reaches the port hold connections
// (and their memory) that long without a certificate.
constexpr int kTlsHandshakeTimeoutMs = 20000;
// How long a stop waits for gRPC's calls to end before it shuts their connections down.
constexpr absl::Duration kStuckCallsGrace = absl::Seconds(2);
// And then for calls still running (a step in Gloo's exchange with other nodes, which nothing
// here can end before its step timeout) before it exits without them, once no step is doing
// local work (LocalWork).
constexpr absl::Duration kStuckStepsGrace = absl::Seconds(3);
// How long a stop whose drain ran out waits for the local work under way (a CPU step's rule and
// scaling take milliseconds) before it cancels the calls left.
constexpr absl::Duration kCloseLocalWorkWait = absl::Seconds(2);

// Each gstabd serves the rendezvous store with its --peer_tls_cert and dials the other nodes'
// with it: dialled with its own certificate, its own --peer_listen must answer. Otherwise
// every multi-node job would fail at its first step, far from the cause.
absl::Status CheckPeerCertificate(const std::string& address, const MutualTls& tls) {
  if (!tls.enabled()) return absl::OkStatus();
  grpc::ChannelArguments args;
  std::shared_ptr<grpc::ChannelCredentials> credentials = MutualTlsChannelCredentials(tls, &args);
  std::unique_ptr<v1::Rendezvous::Stub> stub =
      v1::Rendezvous::NewStub(grpc::CreateCustomChannel(address, credentials, args));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::StoreGetRequest request;
  request.set_token("certificate-check");
  v1::StoreGetResponse response;
  const grpc::Status s = stub->StoreGet(&ctx, request, &response);
  // An answer (PERMISSION_DENIED: no such token) means the handshake passed.
  if (s.error_code() != grpc::StatusCode::UNAVAILABLE &&
      s.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "gstabd cannot reach its own --peer_listen at ", address, " with its own certificate (",
      s.error_message(),
      "): every gstabd of a job serves and dials the others with --peer_tls_cert, so it must "
      "name the host dialled (in its subjectAltName, or give --peer_tls_name), allow both "
      "serverAuth and clientAuth (or name no extendedKeyUsage), and be signed by --peer_tls_ca "
      "(docs/multinode.md, Certificates)"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Create(const ServerOptions& options) {
  if (options.socket_path.empty() && options.listen_address.empty()) {
    return absl::InvalidArgumentError("nothing to listen on: give a socket path or an address");
  }
  if (options.listen_address.empty() && !options.daemon.tls_operators.empty()) {
    return absl::InvalidArgumentError(
        "--tls_operators names client certificates of gstabd's TCP port, and --listen is not set");
  }
  // Settings that would be ignored: a port meant to be served is not.
  if (options.listen_address.empty() &&
      !(options.tls_cert.empty() && options.tls_key.empty() && options.tls_client_ca.empty())) {
    return absl::InvalidArgumentError(
        "--tls_cert, --tls_key and --tls_client_ca are for gstabd's TCP port, and --listen is "
        "not set");
  }
  if (options.peer_listen.empty() &&
      !(options.peer_tls_ca.empty() && options.peer_tls_cert.empty() &&
        options.peer_tls_key.empty() && options.peer_tls_name.empty())) {
    return absl::InvalidArgumentError(
        "--peer_tls_ca, --peer_tls_cert, --peer_tls_key and --peer_tls_name are for the peer "
        "port, and --peer_listen is not set");
  }
  for (const std::string& name : options.daemon.tls_operators) {
    if (name.empty()) {
      return absl::InvalidArgumentError(
          "--tls_operators has an empty name: list certificates' names, comma-separated");
    }
  }
  ServerOptions resolved = options;
  MutualTls listen_tls;
  if (!options.listen_address.empty()) {
    const std::optional<HostPort> at = SplitHostPort(options.listen_address);
    if (!at.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("--listen='", options.listen_address,
                                                     "' must be HOST:PORT (port 0 picks one)"));
    }
    resolved.listen_address = JoinHostPort(at->host, at->port);
    // Its clients are not the socket's, whose credentials the allow-list checks: each shows a
    // certificate of a CA gstabd trusts instead.
    if (options.tls_cert.empty() || options.tls_key.empty() || options.tls_client_ca.empty()) {
      return absl::InvalidArgumentError(
          "TCP listening requires mutual TLS: give --tls_cert and --tls_key (gstabd's) and "
          "--tls_client_ca (the CA that signs its clients' certificates) with --listen");
    }
    absl::StatusOr<MutualTls> tls =
        LoadMutualTls({"tls_client_ca", "tls_cert", "tls_key"},
                      {options.tls_client_ca, options.tls_cert, options.tls_key});
    if (!tls.ok()) return tls.status();
    listen_tls = *std::move(tls);
    listen_tls.reload = options.tls_reload;
  }
  if (!options.peer_listen.empty()) {
    const std::optional<HostPort> at = SplitHostPort(options.peer_listen);
    if (!at.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("--peer_listen='", options.peer_listen,
                                                     "' must be HOST:PORT (an address other "
                                                     "nodes can reach)"));
    }
    // Other nodes dial this host (it goes into rendezvous blobs, and Gloo binds it): a wildcard
    // would send each of them to its own machine.
    if (IsWildcardHost(at->host)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--peer_listen='", options.peer_listen,
          "': other nodes dial this address, and a wildcard names no host: give this node's own "
          "address (the Helm chart passes the node's IP)"));
    }
    resolved.peer_listen = JoinHostPort(at->host, at->port);
    if (resolved.daemon.peer_host.empty()) resolved.daemon.peer_host = at->host;
    absl::StatusOr<MutualTls> tls =
        LoadPeerTls(resolved.daemon.peer_host, options.peer_tls_ca, options.peer_tls_cert,
                    options.peer_tls_key, options.peer_tls_name);
    if (!tls.ok()) return tls.status();
    resolved.daemon.peer_tls = *std::move(tls);
    resolved.daemon.peer_tls.reload = options.tls_reload;
  }
  std::unique_ptr<Server> server(new Server(resolved));
  server->listen_tls_ = std::move(listen_tls);
  // Event numbers go on increasing across restarts (a reader that resumes after the last one it
  // saw misses nothing): from the start's time in microseconds, which the events of a run before
  // it cannot reach at fewer than a million a second.
  server->events_.StartSequenceAt(static_cast<uint64_t>(absl::ToUnixMicros(absl::Now())));
  server->observer_ =
      std::make_unique<Observer>(&server->metrics_, &server->events_, options.metrics_max_groups);
  absl::StatusOr<std::unique_ptr<Daemon>> daemon =
      Daemon::Create(server->options_.daemon, server->observer_.get());
  if (!daemon.ok()) return daemon.status();
  server->daemon_ = *std::move(daemon);
  server->checkpoint_failures_ = server->metrics_.AddCounter(
      "gstab_checkpoint_failures_total",
      "Checkpoints of every job (periodic, or at shutdown) in which some job's could not be "
      "written to --state_dir; the log says why.",
      {});
  server->checkpoint_failures_->Add({}, 0);
  server->checkpoint_succeeded_ = server->metrics_.AddGauge(
      "gstab_checkpoint_last_success_timestamp_seconds",
      "When every job's statistics were last checkpointed (Unix seconds); 0 until then.", {});
  server->checkpoint_succeeded_->Set({}, 0);
  MetricFamily* errors = server->metrics_.AddCounter(
      "gstab_rpc_errors_total",
      "Calls gstabd answered with an error, by RPC method and gRPC status code.",
      {"method", "code"});
  // Step's series from the start, and those of the other calls refused at a cap, so that an
  // alert on their increase sees the first error (GstabStepsFailing, GstabRefusingAtItsCaps).
  for (int code = 1; code <= static_cast<int>(absl::StatusCode::kUnauthenticated); ++code) {
    errors->Add({"Step", absl::StatusCodeToString(static_cast<absl::StatusCode>(code))}, 0);
  }
  for (const char* method :
       {"Attach", "RegisterBuffers", "CreateRendezvous", "ImportState", "WatchEvents"}) {
    errors->Add({method, absl::StatusCodeToString(absl::StatusCode::kResourceExhausted)}, 0);
  }
  server->service_ = std::make_unique<StabilizerService>(
      server->daemon_.get(), &server->events_, &server->peers_, errors, options.max_event_streams,
      options.max_calls_per_caller);
  return server;
}

Server::~Server() {
  if (grpc_server_ != nullptr) (void)Stop(absl::Now());
}

absl::Status Server::Start() {
  if (options_.daemon.state_dir.empty()) {
    LOG(WARNING) << "--state_dir is empty: job statistics are not checkpointed, and are lost "
                    "when gstabd stops or retires a job";
  }
  // Metrics first: once the socket exists, everything gstabd serves is up.
  if (options_.metrics_port >= 0) {
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> http =
        MetricsHttpServer::Start(&metrics_, options_.metrics_port, options_.metrics_address);
    if (!http.ok()) return http.status();
    http_ = *std::move(http);
    LOG(INFO) << "metrics on http://"
              << (options_.metrics_address.empty() ? "0.0.0.0" : options_.metrics_address) << ":"
              << http_->port() << "/metrics";
  }
  // The peer port before anything serves callers: a CreateRendezvous must find the peer address
  // (the port's certificate check dials it, which takes a while).
  if (!options_.peer_listen.empty()) {
    // Only the rendezvous store is served to peers; holders of a rendezvous token may use it.
    rendezvous_service_ = std::make_unique<RendezvousService>(daemon_->rendezvous_store());
    grpc::ServerBuilder peers;
    // A quota of its own: local callers' large requests do not crowd out other nodes' store
    // calls (small: addresses and Gloo's records), and the other way round.
    grpc::ResourceQuota peer_quota("gstabd-peers");
    peer_quota.Resize(size_t{256} << 20);
    peers.SetResourceQuota(peer_quota);
    peers.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, kTlsHandshakeTimeoutMs);
    int port = 0;
    peers.AddListeningPort(options_.peer_listen,
                           MutualTlsServerCredentials(options_.daemon.peer_tls), &port);
    peers.RegisterService(rendezvous_service_.get());
    peer_server_ = peers.BuildAndStart();
    if (peer_server_ == nullptr || port == 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot listen for peers on ", options_.peer_listen));
    }
    const std::string address = JoinHostPort(options_.daemon.peer_host, std::to_string(port));
    if (absl::Status s = CheckPeerCertificate(address, options_.daemon.peer_tls); !s.ok()) {
      return s;
    }
    daemon_->SetPeerAddress(address);
    LOG(INFO) << "serving peers on " << address
              << (options_.daemon.peer_tls.enabled() ? " (mutual TLS)" : " (plain TCP, loopback)");
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  // ImportState carries a job's whole state, and registrations up to 65536 tensors: past
  // gRPC's default 4 MiB.
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  // Requests are received whole before any check of who sent them: many large ones at once
  // would otherwise take all of gstabd's memory.
  // A connection whose client stopped answering (its host gone, the process stopped) is closed,
  // ending its calls: a dead event-stream reader would otherwise hold its thread and its place
  // for as long as TCP's own keep-alive (two hours), or for good on the unix socket. Pinged
  // while a call is in flight, and an idle event stream sends no data: no cap on pings without.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(options_.keepalive)));
  builder.AddChannelArgument(
      GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
      static_cast<int>(absl::ToInt64Milliseconds(options_.keepalive_timeout)));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Clients ping too (the library's $GSTAB_KEEPALIVE_MS), to tell a gstabd gone from a quiet
  // event stream: up to once a second is no abuse.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, kTlsHandshakeTimeoutMs);
  grpc::ResourceQuota quota("gstabd-requests");
  quota.Resize(static_cast<size_t>(options_.rpc_memory_mb) << 20);
  builder.SetResourceQuota(quota);
  if (!options_.socket_path.empty()) {
    MetricFamily* refusals = metrics_.AddCounter(
        "gstab_connections_refused_total",
        "Connections to the unix socket gstabd closed at once, by reason: not_allowed (not in "
        "--allow_uids or --allow_gids), per_uid_cap (--max_connections_per_uid).",
        {"reason"});
    for (const char* reason : {"not_allowed", "per_uid_cap"}) refusals->Add({reason}, 0);
    // The unix socket is ours: connections reach gRPC only after their credentials pass.
    absl::StatusOr<std::unique_ptr<UnixListener>> listener =
        UnixListener::Create(options_.socket_path, options_.peers, &peers_, refusals);
    if (!listener.ok()) return listener.status();
    unix_listener_ = *std::move(listener);
  }
  if (!options_.health_socket_path.empty()) {
    PeerPolicy probes;
    probes.uids = {geteuid(), 0};
    probes.max_connections_per_uid = ServerOptions::kHealthConnections;
    probes.allow_source = "the probe socket's allow-list (gstabd's own uid and root)";
    probes.cap_source = "the probe socket's cap (probes do not hold connections open)";
    absl::StatusOr<std::unique_ptr<UnixListener>> listener =
        UnixListener::Create(options_.health_socket_path, probes, &peers_, /*refusals=*/nullptr);
    if (!listener.ok()) return listener.status();
    health_listener_ = *std::move(listener);
  }
  int tcp_port = 0;
  if (!options_.listen_address.empty()) {
    builder.AddListeningPort(options_.listen_address, MutualTlsServerCredentials(listen_tls_),
                             &tcp_port);
  }
  builder.RegisterService(service_.get());
  grpc_server_ = builder.BuildAndStart();
  if (grpc_server_ == nullptr || (!options_.listen_address.empty() && tcp_port == 0)) {
    return absl::UnavailableError(
        absl::StrCat("cannot start the gRPC server (--listen=", options_.listen_address, ")"));
  }
  if (unix_listener_ != nullptr) unix_listener_->Start(grpc_server_.get());
  if (health_listener_ != nullptr) health_listener_->Start(grpc_server_.get());
  grpc_server_->GetHealthCheckService()->SetServingStatus(true);
  housekeeping_ = std::thread([this] { Housekeeping(); });
  state_keeping_ = std::thread([this] { StateKeeping(); });
  std::string tcp;
  if (tcp_port != 0) {
    const std::string host = SplitHostPort(options_.listen_address)->host;
    tcp =
        absl::StrCat(" and on TCP ", JoinHostPort(host, std::to_string(tcp_port)), " (mutual TLS)");
  }
  // Which backend serves, said once: --backend=auto on a GPU node whose driver is unusable
  // serves host memory alone, and GPU workers' registrations are refused.
  LOG(INFO) << "gstabd serving on unix:" << options_.socket_path << tcp
            << (options_.health_socket_path.empty()
                    ? ""
                    : absl::StrCat(" (probes: unix:", options_.health_socket_path, ")"))
            << "; backend: "
            << (options_.daemon.cuda ? "cuda (and host shared memory)"
                                     : "cpu (host shared memory only)")
            << "; instance " << service_->instance();
  return absl::OkStatus();
}

void Server::Housekeeping() {
  const absl::Duration tick = std::min(options_.daemon.lease / 4, absl::Seconds(1));
  while (!stopping_.WaitForNotificationWithTimeout(tick)) {
    daemon_->ExpireSessions(MonotonicNow());
    daemon_->ReportFinishedGpuSteps();
  }
}

void Server::StateKeeping() {
  const absl::Duration tick = std::min(options_.daemon.lease / 4, absl::Seconds(1));
  // Spans by the monotonic clock; the checkpoints' ages (kept across restarts) by the wall's.
  absl::Time next_checkpoint = MonotonicNow() + options_.checkpoint_interval;
  while (!stopping_.WaitForNotificationWithTimeout(tick)) {
    daemon_->RetireIdleJobs(MonotonicNow());
    daemon_->DeleteOldCheckpoints(absl::Now());
    if (MonotonicNow() >= next_checkpoint) {
      (void)Checkpoint();
      next_checkpoint = MonotonicNow() + options_.checkpoint_interval;
      // Memory freed since (a burst of large requests, checkpoints' buffers) goes back to the
      // system: the allocator would otherwise keep it, and gstabd's RSS would show its peak.
      malloc_trim(0);
    }
  }
}

absl::Status Server::Stop(absl::Time deadline, std::function<int()> exit_code) {
  if (grpc_server_ == nullptr) return absl::OkStatus();
  LOG(INFO) << "gstabd stopping: draining in-flight steps";
  grpc_server_->GetHealthCheckService()->SetServingStatus(false);
  if (unix_listener_ != nullptr) unix_listener_->Stop();  // no new connections; removes the file
  if (health_listener_ != nullptr) health_listener_->Stop();
  daemon_->BeginShutdown();
  if (!daemon_->DrainSteps(deadline)) {
    // A round still waiting for another node can hold its call (and the wait for the server
    // below) past Kubernetes' grace period: the statistics are saved now, and again at the end.
    LOG(WARNING) << "steps still in flight at the deadline; checkpointing now";
    (void)Checkpoint();
    // From now on no step begins its rule or its scaling: a Step the shutdown below cancels has
    // then done all of it or none, as its client reads in its progress word. A GPU step in
    // NCCL may hold local work longer; it is not waited for past this.
    for (const absl::Time until = absl::Now() + kCloseLocalWorkWait;
         !LocalWork::Close() && absl::Now() < until;) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    // Such a round may wait in a rendezvous store, this node's or another's, for nodes that
    // never come (up to the step timeout): those waits end now, and the round with them. This
    // gstabd's calls are marked cancelled first, so that a call its own closed store answers is
    // known as the stop's.
    daemon_->CancelStoreCalls();
    if (peer_server_ != nullptr) daemon_->rendezvous_store()->Close();
  }
  // CUDA steps the GPU has finished since the housekeeping last looked: their metrics and
  // events, before the event streams end (not waited for: one still on the GPU goes unreported).
  daemon_->ReportFinishedGpuSteps();
  events_.Close();  // ends WatchEvents streams, after the drained steps' events
  // The steps have finished (or were ended above); idle connections need no grace period. But
  // an event stream whose reader stopped reading (a suspended `gstabctl events --follow`) holds
  // its handler in a write that no cancellation ends, and the shutdown waits for every handler:
  // past a grace period the socket's connections are shut down under gRPC.
  absl::Notification shut_down;
  std::thread unstick([&] {
    if (shut_down.WaitForNotificationWithTimeout(kStuckCallsGrace)) return;
    int shut = unix_listener_ != nullptr ? unix_listener_->ShutdownConnections() : 0;
    if (health_listener_ != nullptr) shut += health_listener_->ShutdownConnections();
    LOG(WARNING) << "calls still running " << absl::FormatDuration(kStuckCallsGrace)
                 << " after the drain (a step waiting for other nodes, or a client that stopped "
                 << "reading its event stream): "
                 << "the socket's open connections (" << shut << ") are shut down";
    if (shut_down.WaitForNotificationWithTimeout(kStuckStepsGrace)) return;
    // A step in a cross-node exchange holds its handler, and gRPC's wait for it, until the
    // step timeout (a minute by default, past Kubernetes' grace period), with the state folder
    // locked against this gstabd's replacement. Its statistics are saved; the process ends,
    // but not while a step runs its kernels or rule (it would be counted half applied).
    while (!LocalWork::Close()) {
      if (shut_down.WaitForNotificationWithTimeout(absl::Milliseconds(100))) return;
    }
    const absl::Status saved = Checkpoint(/*final=*/true);
    LOG(WARNING) << "calls still running "
                 << absl::FormatDuration(kStuckCallsGrace + kStuckStepsGrace)
                 << " after the drain (a step waiting in an exchange with other nodes until its "
                 << "step timeout, most likely): gstabd exits without them"
                 << (saved.ok() ? Checkpointed() : "");
    StderrLog::FlushInstalled(absl::Seconds(2));  // _exit runs no destructor
    const int code = exit_code();
    _exit(code != 0 ? code : saved.ok() ? 0 : 1);
  });
  grpc_server_->Shutdown(absl::ToChronoTime(absl::Now() + kAnswerGrace));
  grpc_server_->Wait();
  shut_down.Notify();
  unstick.join();
  grpc_server_.reset();
  if (peer_server_ != nullptr) {
    daemon_->rendezvous_store()->Close();  // its waits would hold up the shutdown
    peer_server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Milliseconds(100)));
    peer_server_.reset();
  }
  stopping_.Notify();
  if (housekeeping_.joinable()) housekeeping_.join();
  if (state_keeping_.joinable()) state_keeping_.join();
  http_.reset();
  absl::Status s = Checkpoint(/*final=*/true);
  LOG(INFO) << "gstabd stopped" << (s.ok() ? Checkpointed() : "");
  return s;
}

absl::Status Server::Checkpoint(bool final) {
  absl::Status s = daemon_->Checkpoint();
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&checkpoint_log_mu_);
  if (s.ok()) {
    checkpoint_succeeded_->Set({}, absl::ToDoubleSeconds(now - absl::UnixEpoch()));
    if (failing_) LOG(INFO) << "checkpoints are written again";
    failing_ = false;
    failures_unlogged_ = 0;
    return s;
  }
  checkpoint_failures_->Add({}, 1);
  if (failing_ && now - failure_logged_ < kFailureLogEvery && !final) {
    ++failures_unlogged_;
    return s;
  }
  LOG(ERROR) << s
             << (failures_unlogged_ > 0
                     ? absl::StrCat(" (", failures_unlogged_,
                                    " more failed since the last line about them)")
                     : "");
  failing_ = true;
  failure_logged_ = now;
  failures_unlogged_ = 0;
  return s;
}

}  // namespace gstab
