#include "server/server.h"

#include <grpc/grpc.h>
#include <grpcpp/resource_quota.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/host_port.h"
#include "common/wire_limits.h"
#include "glog/logging.h"
#include "server/peer_tls.h"

namespace gstab {

namespace {

// A TCP connection (--listen, --peer_listen) that has not finished its TLS handshake by then is
// closed: gRPC's own default, two minutes, lets anyone who reaches the port hold connections
// (and their memory) that long without a certificate.
constexpr int kTlsHandshakeTimeoutMs = 20000;

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
  for (const char* method : StabilizerService::kCappedMethods) {
    errors->Add({method, absl::StatusCodeToString(absl::StatusCode::kResourceExhausted)}, 0);
  }
  MetricFamily* streams = server->metrics_.AddGauge(
      "gstab_event_streams",
      "WatchEvents streams: open, and waiting (a write to the stream has waited 1 s or more for "
      "its reader; ended after --event_write_timeout_s).",
      {"state"});
  for (const char* state : {"open", "waiting"}) streams->Set({state}, 0);
  server->service_ = std::make_unique<StabilizerService>(
      server->daemon_.get(), &server->events_, &server->peers_, errors, options.max_event_streams,
      options.max_calls_per_caller, options.max_event_streams_total, options.event_write_timeout,
      streams);
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
    // A port another process serves is refused, not shared (gRPC takes SO_REUSEPORT by
    // default, and the kernel would split other nodes' connections between the two).
    peers.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
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
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // --listen: as the peer port above
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
    probes.private_folder = false;
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

}  // namespace gstab
