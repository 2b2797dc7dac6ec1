// gstabd as a whole: the Daemon, the gRPC server on its unix socket (and optional TLS TCP
// port), the standard health service, and the background threads that expire sessions and
// write checkpoints.
//
//   auto server = Server::Create(options);   // restores checkpoints
//   server->Start();                         // listens; health SERVING
//   ...                                      // wait for a signal
//   server->Stop(absl::Now() + absl::Seconds(10));  // NOT_SERVING, drain, checkpoint
//
// Start and Stop are called from one thread; everything else is internal.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/wire_limits.h"
#include "server/daemon.h"
#include "server/event_bus.h"
#include "server/metrics.h"
#include "server/metrics_http.h"
#include "server/observer.h"
#include "server/rendezvous_store.h"
#include "server/service.h"
#include "server/unix_listener.h"

namespace gstab {

struct ServerOptions {
  DaemonOptions daemon;
  std::string socket_path = "/run/gstab/gstabd.sock";
  PeerPolicy peers;            // who may connect to the unix socket (SO_PEERCRED)
  // A second unix socket for gstabd's own probes (gstabctl health), outside the socket's
  // per-uid cap: workers of the uid a probe runs as (root, say) that hold that many
  // connections must not fail it, and have the whole node's gstabd restarted. Only gstabd's own
  // uid and root may connect, kHealthConnections at once. Empty: none.
  std::string health_socket_path;
  static constexpr int kHealthConnections = 16;
  // host:port for TCP (port 0 picks one, logged); requires mutual TLS: gstabd's certificate
  // and key, and the CA that signs its clients' certificates (PEM files).
  std::string listen_address;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  // How often the TLS files (these and the peer_tls_* ones) are looked at again.
  absl::Duration tls_reload = absl::Seconds(60);
  absl::Duration checkpoint_interval = absl::Seconds(30);
  // The longest a stop may take before gstabd exits without finishing it (StopLimit): below the
  // supervisor's own limit (Kubernetes' grace period, systemd's stop timeout; 60 s as shipped).
  absl::Duration stop_limit = absl::Seconds(55);
  int metrics_port = 9478;  // 0: a free port (logged); -1: no metrics endpoint
  std::string metrics_address;  // the IPv4 address it listens on; empty: every interface
  // host:port for the other daemons of multi-node jobs (rendezvous store; port 0 picks one).
  // Empty: this daemon serves single-node jobs only.
  std::string peer_listen;
  // PEM files for mutual TLS between daemons (required unless peer_listen is loopback), and
  // the name peers' certificates carry when it is not their host (optional).
  std::string peer_tls_ca;
  std::string peer_tls_cert;
  std::string peer_tls_key;
  std::string peer_tls_name;
  uint32_t metrics_max_groups = Observer::kDefaultMaxGroups;
  int max_event_streams = StabilizerService::kMaxEventStreams;  // a caller's WatchEvents streams
  int max_event_streams_total = StabilizerService::kMaxEventStreamsTotal;  // every caller's
  // An event stream whose reader takes no event for this long is ended (EndStalledStreams).
  absl::Duration event_write_timeout = absl::Seconds(60);
  // How long a connection with a call in flight may stay silent before gstabd pings its client,
  // and how long the client has to answer: one that does not (its host gone, the process
  // stopped) has its connection closed and its calls ended, so that a dead reader of an event
  // stream does not hold its place (--max_event_streams) for good.
  absl::Duration keepalive = absl::Seconds(60);
  absl::Duration keepalive_timeout = absl::Seconds(20);
  // A caller's calls that may wait (Attach, RegisterBuffers, Step, ImportState) in flight.
  int max_calls_per_caller = StabilizerService::kMaxCallsPerCaller;
  // Memory gRPC may hold for the requests it is receiving, over every caller: past it, calls are
  // cancelled (RESOURCE_EXHAUSTED) rather than gstabd running out of memory. At least twice the
  // largest request (kMaxMessageBytes).
  int rpc_memory_mb = kDefaultRpcMemoryMb;
  static constexpr int kDefaultRpcMemoryMb = 1024;
  static constexpr int kMinRpcMemoryMb = 2 * (kMaxMessageBytes >> 20);
};

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Create(const ServerOptions& options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  absl::Status Start();
  // Health NOT_SERVING, refuse new steps, finish in-flight calls until `deadline`, write
  // checkpoints, remove the socket. `exit_code` gives the process's exit code for a stop with a
  // cause of its own (a lost CUDA context), else 0: the last resort's _exit (server_stop.cc)
  // exits with it, or with 0, or 1 when its checkpoint fails; the stop limit's (StopLimit,
  // options.stop_limit) with it, or with 1. Called from those two threads.
  absl::Status Stop(
      absl::Time deadline, std::function<int()> exit_code = [] { return 0; });

  Daemon* daemon() { return daemon_.get(); }
  int metrics_port() const { return http_ == nullptr ? -1 : http_->port(); }

 private:
  explicit Server(const ServerOptions& options) : options_(options) {}
  // Every tick (a quarter lease, at most a second): sessions past their lease, and the GPU steps
  // finished since. Nothing that touches the disk, which can hang (a state folder on a network
  // file system gone away): that is StateKeeping's, on a thread of its own.
  void Housekeeping();
  // Every tick: idle jobs retired (their checkpoints written), old checkpoints deleted, and
  // every --checkpoint_interval_s a checkpoint of every job.
  void StateKeeping();
  // Checkpoints every job, counting failures and the time of the last success in /metrics.
  // A failure is logged at once, then at most every kFailureLogEvery while they go on (a full
  // disk would otherwise log one every --checkpoint_interval_s), and the recovery once. A
  // `final` one (gstabd's last) is always logged when it fails.
  absl::Status Checkpoint(bool final = false);
  static constexpr absl::Duration kFailureLogEvery = absl::Minutes(10);
  // What the stop's log line adds after a successful last checkpoint.
  const char* Checkpointed() const {
    return options_.daemon.state_dir.empty() ? "; no --state_dir: statistics not kept"
                                             : "; statistics checkpointed";
  }

  const ServerOptions options_;
  MetricsRegistry metrics_;
  EventBus events_;
  PeerTable peers_;  // credentials of the unix socket's connections
  MutualTls listen_tls_;  // listen_address's: gstabd's certificate, its clients' CA
  std::unique_ptr<Observer> observer_;
  std::unique_ptr<Daemon> daemon_;
  MetricFamily* checkpoint_failures_ = nullptr;
  MetricFamily* checkpoint_succeeded_ = nullptr;
  absl::Mutex checkpoint_log_mu_;
  absl::Time failure_logged_ ABSL_GUARDED_BY(checkpoint_log_mu_) = absl::InfinitePast();
  int failures_unlogged_ ABSL_GUARDED_BY(checkpoint_log_mu_) = 0;
  bool failing_ ABSL_GUARDED_BY(checkpoint_log_mu_) = false;
  std::unique_ptr<MetricsHttpServer> http_;
  std::unique_ptr<StabilizerService> service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<RendezvousService> rendezvous_service_;
  std::unique_ptr<grpc::Server> peer_server_;  // the Rendezvous service on peer_listen
  absl::Notification stopping_;
  std::unique_ptr<UnixListener> unix_listener_;
  std::unique_ptr<UnixListener> health_listener_;
  std::thread housekeeping_;
  std::thread state_keeping_;
};

}  // namespace gstab
