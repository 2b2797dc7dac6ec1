// gstabd's flags (--help lists this file's), checked, and the options they make.
#include "server/gstabd_flags.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "glog/logging.h"
#include "server/shm_faults.h"
#include "server/shm_mapping.h"
#include "server/stderr_log.h"

ABSL_FLAG(std::string, socket, "/run/gstab/gstabd.sock", "unix socket to serve on (mode 0660)");
ABSL_FLAG(std::string, health_socket, "",
          "optional second unix socket for gstabd's own probes (gstabctl health): only gstabd's "
          "uid and root may connect, outside --max_connections_per_uid");
ABSL_FLAG(std::string, listen, "",
          "optional TCP host:port to serve on (port 0 picks one, logged); requires mutual TLS: "
          "--tls_cert, --tls_key and --tls_client_ca");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate (chain) of gstabd for --listen");
ABSL_FLAG(std::string, tls_key, "", "PEM private key for --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA file that signs the certificates of --listen's clients (each must show one)");
ABSL_FLAG(int32_t, tls_reload_s, 60,
          "seconds between looks at the TLS files of --listen and --peer_listen: certificates "
          "renewed in place are served from then on (dials read them anew each time)");
ABSL_FLAG(std::string, state_dir, "/var/lib/gstab", "where job statistics are checkpointed");
ABSL_FLAG(std::string, backend, "auto", "auto, cpu or cuda");
ABSL_FLAG(int32_t, cpu_threads, 0, "threads of the CPU kernels (0: all hardware threads)");
ABSL_FLAG(int32_t, lease_ms, 30000, "a session expires after this long without calls");
ABSL_FLAG(int32_t, step_timeout_ms, 60000, "how long a step waits for a job's other local workers");
ABSL_FLAG(int32_t, checkpoint_interval_s, 30, "seconds between periodic checkpoints");
// The least --lease_ms and --step_timeout_ms.
constexpr int kMinMilliseconds = 100;
// How long a stop held up by calls may take by itself before its last resort (server_stop.cc):
// a --stop_limit_s below it cuts that stop's checkpoints short.
constexpr absl::Duration kStopTakesItself = absl::Seconds(20);
ABSL_FLAG(int32_t, stop_limit_s, 55,
          "seconds a stop may take before gstabd exits without finishing it; below the "
          "supervisor's (Kubernetes' grace period, systemd's stop timeout)");
ABSL_FLAG(uint32_t, max_jobs, 256,
          "jobs held at once; at the cap, a new job retires the longest idle one");
ABSL_FLAG(uint32_t, max_jobs_per_owner, 64,
          "jobs one owner (a uid, or a client certificate's name) holds at once");
// A job's connection records take 136 bytes an ordered pair of nodes, and node 0's rendezvous
// store keeps a job's two newest rendezvous within its 1 GiB: past about 1,980 nodes they would
// not fit, and such a job could never connect again after a failure.
constexpr uint32_t kMaxNodes = 1536;
ABSL_FLAG(uint32_t, max_nodes, 1024,
          "nodes one job may span (1 to 1536; a larger value is taken as 1536): on each node such "
          "a job holds a connection to every other node, and node 0's rendezvous store 136 bytes "
          "an ordered pair of nodes");
ABSL_FLAG(int32_t, job_idle_s, 3600,
          "a job without workers or observers for this long is retired: its statistics are "
          "checkpointed and come back when a worker attaches (0: never)");
ABSL_FLAG(int64_t, job_retention_s, int64_t{30} * 24 * 3600,
          "the checkpoint of a job not attached for this long is deleted (0: never)");
ABSL_FLAG(uint32_t, max_checkpoints_per_owner, 1024,
          "checkpoints of jobs not held one owner keeps; past it, that owner's oldest are "
          "deleted");
ABSL_FLAG(uint32_t, max_buffers, 1024, "buffers per worker registration");
ABSL_FLAG(uint32_t, max_tensors, 65536, "tensors per worker registration");
ABSL_FLAG(uint64_t, max_tensors_per_owner, uint64_t{1} << 22,
          "tensors one owner's (uid's, or certificate's) registrations hold at once, over all "
          "its jobs and workers");
ABSL_FLAG(int32_t, metrics_port, 9478, "Prometheus /metrics port (0: a free port, -1: none)");
ABSL_FLAG(std::string, metrics_address, "",
          "the IPv4 address /metrics listens on (127.0.0.1: this machine only; empty: every "
          "interface)");
ABSL_FLAG(uint32_t, metrics_max_groups, 32, "groups exported per job; the rest as group _other");
ABSL_FLAG(int32_t, rpc_memory_mb, gstab::ServerOptions::kDefaultRpcMemoryMb,
          "MiB of requests being received gstabd holds at once, over every caller; past it, calls "
          "are cancelled (RESOURCE_EXHAUSTED)");
ABSL_FLAG(int32_t, max_event_streams, gstab::StabilizerService::kMaxEventStreams,
          "event streams (WatchEvents, gstabctl events) one caller may have open at once");
ABSL_FLAG(int32_t, max_event_streams_total, gstab::StabilizerService::kMaxEventStreamsTotal,
          "event streams open at once over every caller (each holds a thread of gstabd's)");
ABSL_FLAG(int32_t, event_write_timeout_s, 60,
          "an event stream whose reader takes no event for this long (a suspended `gstabctl events "
          "--follow`, a client that never reads) is ended, its unix-socket connection shut down");
ABSL_FLAG(int32_t, keepalive_ms, 60000,
          "gstabd pings a client's connection after this long without traffic while it has a "
          "call in flight (an event stream, a step waiting)");
ABSL_FLAG(int32_t, keepalive_timeout_ms, 20000,
          "a client that does not answer gstabd's ping within this long (its host gone, the "
          "process stopped) has its connection closed and its calls ended");
ABSL_FLAG(int32_t, max_calls_per_caller, gstab::StabilizerService::kMaxCallsPerCaller,
          "calls that may wait in gstabd (every call but KeepAlive, Detach, Identify and "
          "WatchEvents) one caller (a uid, or a client certificate's name) may have in flight at "
          "once, each on a thread");
ABSL_FLAG(std::string, peer_listen, "",
          "HOST:PORT other nodes' gstabd reach this one at (multi-node jobs; port 0 picks one); "
          "mutual TLS (--peer_tls_*) unless HOST is loopback");
ABSL_FLAG(std::string, peer_tls_ca, "", "PEM CA file that signs every gstabd's peer certificate");
ABSL_FLAG(std::string, peer_tls_cert, "", "PEM certificate (chain) of this gstabd for its peers");
ABSL_FLAG(std::string, peer_tls_key, "", "PEM private key for --peer_tls_cert");
ABSL_FLAG(std::string, peer_tls_name, "",
          "the name peers' certificates carry, if not their --peer_listen host");
ABSL_FLAG(std::vector<std::string>, allow_uids, {},
          "uids allowed to connect to the socket (SO_PEERCRED); with --allow_gids empty too, "
          "anyone the socket's 0660 mode lets in");
ABSL_FLAG(std::vector<std::string>, allow_gids, {}, "primary gids allowed to connect");
ABSL_FLAG(bool, jobs_by_uid, true,
          "a job belongs to whoever made it (a uid over the socket, a client certificate's "
          "name over --listen): others, save root, gstabd's own uid and "
          "--tls_operators, may not attach to it or forget it");
ABSL_FLAG(std::vector<std::string>, tls_operators, {},
          "names of --listen's client certificates (each the first of its SPIFFE ID, CN, dns: and "
          "its first DNS name, email: and its first email address) that act on every job, as root "
          "does over the socket "
          "(comma-separated); other certificates act on their own jobs");
ABSL_FLAG(uint64_t, max_bytes, uint64_t{64} << 30, "gradient bytes per worker registration");
ABSL_FLAG(int32_t, max_mappings, gstab::MappingRegistry::kDefaultMaxMappings,
          "host shared-memory objects mapped at once, over every job (each is one of the "
          "kernel's vm.max_map_count mappings of gstabd)");
ABSL_FLAG(int32_t, max_mappings_per_owner, gstab::MappingRegistry::kDefaultMaxMappingsPerOwner,
          "of --max_mappings, the objects of one uid gstabd maps at once");
ABSL_FLAG(int32_t, max_connections_per_uid, gstab::PeerPolicy::kDefaultMaxConnectionsPerUid,
          "connections to the unix socket one uid may hold open at once; one more is closed at "
          "once (logged)");
ABSL_FLAG(int64_t, log_queue_bytes, gstab::StderrLog::kDefaultMaxQueuedBytes,
          "log lines held while stderr is not read (4096 to 1 GiB); beyond, lines are dropped "
          "and counted; a line longer than a quarter of it is cut");
ABSL_FLAG(bool, nccl_one_rank, false,
          "CUDA jobs of one GPU on one node run the cross-node stage through a world-size-1 NCCL "
          "communicator too (it changes nothing; it checks NCCL on a one-GPU machine)");

namespace gstab {

std::optional<size_t> LogQueueBytesFromFlag() {
  const int64_t log_queue_bytes = absl::GetFlag(FLAGS_log_queue_bytes);
  if (log_queue_bytes < 4096 || log_queue_bytes > (int64_t{1} << 30)) {
    std::fprintf(stderr, "gstabd: --log_queue_bytes must be from 4096 to 1073741824 (1 GiB)\n");
    return std::nullopt;
  }
  return static_cast<size_t>(log_queue_bytes);
}

std::optional<std::string> BackendFromFlag() {
  const std::string backend = absl::GetFlag(FLAGS_backend);
  if (backend != "auto" && backend != "cpu" && backend != "cuda") {
    std::fprintf(stderr, "gstabd: --backend=%s: expected auto, cpu or cuda\n", backend.c_str());
    return std::nullopt;
  }
  return backend;
}

std::optional<ServerOptions> OptionsFromFlags() {
  if (absl::GetFlag(FLAGS_lease_ms) <= 0 || absl::GetFlag(FLAGS_step_timeout_ms) <= 0 ||
      absl::GetFlag(FLAGS_checkpoint_interval_s) <= 0 || absl::GetFlag(FLAGS_keepalive_ms) <= 0 ||
      absl::GetFlag(FLAGS_keepalive_timeout_ms) <= 0 || absl::GetFlag(FLAGS_tls_reload_s) <= 0 ||
      absl::GetFlag(FLAGS_stop_limit_s) <= 0 || absl::GetFlag(FLAGS_event_write_timeout_s) <= 0) {
    std::fprintf(stderr,
                 "gstabd: --lease_ms, --step_timeout_ms, --checkpoint_interval_s, --keepalive_ms, "
                 "--keepalive_timeout_ms, --tls_reload_s, --stop_limit_s and "
                 "--event_write_timeout_s must be positive\n");
    return std::nullopt;
  }
  // Milliseconds: a value meant as seconds (--lease_ms=30) would expire every session, or time
  // out every step, at once, and have housekeeping tick every few milliseconds.
  for (const auto& [name, value] :
       {std::pair<const char*, int64_t>{"lease_ms", absl::GetFlag(FLAGS_lease_ms)},
        {"step_timeout_ms", absl::GetFlag(FLAGS_step_timeout_ms)}}) {
    if (value < kMinMilliseconds) {
      std::fprintf(stderr,
                   "gstabd: --%s=%lld is in milliseconds and must be at least %d (did you mean "
                   "--%s=%lld, %lld seconds?)\n",
                   name, static_cast<long long>(value), kMinMilliseconds, name,
                   static_cast<long long>(value) * 1000, static_cast<long long>(value));
      return std::nullopt;
    }
  }
  if (absl::GetFlag(FLAGS_max_jobs) == 0 || absl::GetFlag(FLAGS_max_jobs_per_owner) == 0 ||
      absl::GetFlag(FLAGS_max_checkpoints_per_owner) == 0 ||
      absl::GetFlag(FLAGS_max_buffers) == 0 || absl::GetFlag(FLAGS_max_tensors) == 0 ||
      absl::GetFlag(FLAGS_max_tensors_per_owner) == 0 || absl::GetFlag(FLAGS_max_bytes) == 0 ||
      absl::GetFlag(FLAGS_max_mappings) <= 0 || absl::GetFlag(FLAGS_max_event_streams) <= 0 ||
      absl::GetFlag(FLAGS_max_event_streams_total) <= 0 ||
      absl::GetFlag(FLAGS_max_calls_per_caller) <= 0 ||
      absl::GetFlag(FLAGS_max_connections_per_uid) <= 0 ||
      absl::GetFlag(FLAGS_max_mappings_per_owner) <= 0) {
    std::fprintf(stderr,
                 "gstabd: --max_jobs, --max_jobs_per_owner, --max_checkpoints_per_owner, "
                 "--max_buffers, --max_tensors, --max_tensors_per_owner, "
                 "--max_bytes, --max_mappings, --max_mappings_per_owner, --max_event_streams, "
                 "--max_event_streams_total, "
                 "--max_calls_per_caller "
                 "and --max_connections_per_uid must be positive (0 would refuse every job, "
                 "registration, event stream or connection, or keep no checkpoint)\n");
    return std::nullopt;
  }
  if (const std::string address = absl::GetFlag(FLAGS_metrics_address); !address.empty()) {
    in_addr parsed;
    if (inet_pton(AF_INET, address.c_str(), &parsed) != 1) {
      std::fprintf(stderr, "gstabd: --metrics_address=%s is not an IPv4 address\n",
                   address.c_str());
      return std::nullopt;
    }
    if (absl::GetFlag(FLAGS_metrics_port) == -1) {
      std::fprintf(stderr,
                   "gstabd: --metrics_address is the metrics port's, and --metrics_port=-1 "
                   "serves none\n");
      return std::nullopt;
    }
  }
  if (absl::GetFlag(FLAGS_max_nodes) < 1) {
    std::fprintf(stderr, "gstabd: --max_nodes must be 1 to %u, not 0\n", kMaxNodes);
    return std::nullopt;
  }
  if (absl::GetFlag(FLAGS_max_nodes) > kMaxNodes) {
    // Taken before, and refusing it now would keep a node's gstabd from starting at an upgrade.
    LOG(WARNING) << "--max_nodes=" << absl::GetFlag(FLAGS_max_nodes) << " taken as " << kMaxNodes
                 << ": a larger job's connection records would not fit node 0's rendezvous store";
    absl::SetFlag(&FLAGS_max_nodes, kMaxNodes);
  }
  if (absl::GetFlag(FLAGS_max_mappings) > ShmFaults::kSlots) {
    std::fprintf(stderr, "gstabd: --max_mappings may be at most %d\n", ShmFaults::kSlots);
    return std::nullopt;
  }
  if (absl::GetFlag(FLAGS_rpc_memory_mb) < ServerOptions::kMinRpcMemoryMb) {
    std::fprintf(stderr,
                 "gstabd: --rpc_memory_mb must be at least %d, twice the largest request gstabd "
                 "takes (%d MiB)\n",
                 ServerOptions::kMinRpcMemoryMb, kMaxMessageBytes >> 20);
    return std::nullopt;
  }
  if (const int32_t port = absl::GetFlag(FLAGS_metrics_port); port < -1 || port > 65535) {
    std::fprintf(stderr,
                 "gstabd: --metrics_port=%d: a port (1 to 65535), 0 for a free one or -1 for "
                 "none\n",
                 port);
    return std::nullopt;
  }
  if (absl::GetFlag(FLAGS_cpu_threads) < 0 || absl::GetFlag(FLAGS_cpu_threads) > 1024) {
    std::fprintf(stderr,
                 "gstabd: --cpu_threads takes a count up to 1024, or 0 for every hardware "
                 "thread\n");
    return std::nullopt;
  }
  if (absl::GetFlag(FLAGS_job_idle_s) < 0 || absl::GetFlag(FLAGS_job_retention_s) < 0) {
    std::fprintf(stderr,
                 "gstabd: --job_idle_s and --job_retention_s take seconds, or 0 for never\n");
    return std::nullopt;
  }
  ServerOptions options;
  options.socket_path = absl::GetFlag(FLAGS_socket);
  options.health_socket_path = absl::GetFlag(FLAGS_health_socket);
  // As paths, not as text: `/run/gstab//gstabd.sock`, or the socket's through a symbolic link.
  auto same_path = [](const std::string& a, const std::string& b) {
    std::error_code ea, eb;
    return std::filesystem::weakly_canonical(a, ea) == std::filesystem::weakly_canonical(b, eb) &&
           !ea && !eb;
  };
  if (!options.health_socket_path.empty() &&
      (options.health_socket_path == options.socket_path ||
       same_path(options.health_socket_path, options.socket_path))) {
    std::fprintf(stderr, "gstabd: --health_socket must be another path than --socket\n");
    return std::nullopt;
  }
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  options.checkpoint_interval = absl::Seconds(absl::GetFlag(FLAGS_checkpoint_interval_s));
  options.stop_limit = absl::Seconds(absl::GetFlag(FLAGS_stop_limit_s));
  if (options.stop_limit < kStopTakesItself) {
    LOG(WARNING) << "--stop_limit_s=" << absl::GetFlag(FLAGS_stop_limit_s) << " is below the "
                 << absl::FormatDuration(kStopTakesItself)
                 << " a held-up stop may take by itself (a drain of up to 10 s, its checkpoint, "
                    "5 s more for calls, and the last checkpoint): a stop cut there skips them";
  }
  options.tls_reload = absl::Seconds(absl::GetFlag(FLAGS_tls_reload_s));
  options.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  options.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  options.peer_listen = absl::GetFlag(FLAGS_peer_listen);
  options.peer_tls_ca = absl::GetFlag(FLAGS_peer_tls_ca);
  options.peer_tls_cert = absl::GetFlag(FLAGS_peer_tls_cert);
  options.peer_tls_key = absl::GetFlag(FLAGS_peer_tls_key);
  options.peer_tls_name = absl::GetFlag(FLAGS_peer_tls_name);
  options.metrics_max_groups = absl::GetFlag(FLAGS_metrics_max_groups);
  options.max_event_streams = absl::GetFlag(FLAGS_max_event_streams);
  options.max_event_streams_total = absl::GetFlag(FLAGS_max_event_streams_total);
  options.max_calls_per_caller = absl::GetFlag(FLAGS_max_calls_per_caller);
  options.keepalive = absl::Milliseconds(absl::GetFlag(FLAGS_keepalive_ms));
  options.event_write_timeout = absl::Seconds(absl::GetFlag(FLAGS_event_write_timeout_s));
  options.keepalive_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_keepalive_timeout_ms));
  options.rpc_memory_mb = absl::GetFlag(FLAGS_rpc_memory_mb);
  options.daemon.state_dir = absl::GetFlag(FLAGS_state_dir);
  // gstabd makes a state folder of its own files alone mode 0700 at start: a socket there (left
  // out of that check once a clean stop removed it) would then shut other users' workers out.
  auto in_state_dir = [&options](const std::string& socket) {
    if (socket.empty() || options.daemon.state_dir.empty()) return false;
    std::error_code es, ed;
    const std::filesystem::path folder =
        std::filesystem::weakly_canonical(std::filesystem::absolute(socket, es).parent_path(), es);
    std::filesystem::path state =
        std::filesystem::weakly_canonical(options.daemon.state_dir, ed).lexically_normal();
    if (es || ed) return false;
    if (state.filename().empty()) state = state.parent_path();  // a trailing '/'
    return std::mismatch(state.begin(), state.end(), folder.begin(), folder.end()).first ==
           state.end();
  };
  // (Not the health socket: only gstabd's uid and root connect to it.)
  if (in_state_dir(options.socket_path)) {
    std::fprintf(stderr,
                 "gstabd: --socket=%s is in --state_dir=%s: gstabd makes its state folder its "
                 "own user's alone (mode 0700), which would shut other users' workers out of the "
                 "socket; give the socket a folder of its own (/run/gstab)\n",
                 options.socket_path.c_str(), options.daemon.state_dir.c_str());
    return std::nullopt;
  }
  options.daemon.cpu_threads = absl::GetFlag(FLAGS_cpu_threads);
  options.daemon.lease = absl::Milliseconds(absl::GetFlag(FLAGS_lease_ms));
  options.daemon.step_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_step_timeout_ms));
  options.daemon.nccl_one_rank = absl::GetFlag(FLAGS_nccl_one_rank);
  options.daemon.jobs_by_uid = absl::GetFlag(FLAGS_jobs_by_uid);
  for (const std::string& name : absl::GetFlag(FLAGS_tls_operators)) {
    options.daemon.tls_operators.insert(name);
  }
  options.daemon.max_jobs = absl::GetFlag(FLAGS_max_jobs);
  options.daemon.max_jobs_per_owner = absl::GetFlag(FLAGS_max_jobs_per_owner);
  options.daemon.max_nodes = absl::GetFlag(FLAGS_max_nodes);
  const int32_t job_idle_s = absl::GetFlag(FLAGS_job_idle_s);
  options.daemon.job_idle = job_idle_s > 0 ? absl::Seconds(job_idle_s) : absl::InfiniteDuration();
  const int64_t job_retention_s = absl::GetFlag(FLAGS_job_retention_s);
  options.daemon.max_checkpoints_per_owner = absl::GetFlag(FLAGS_max_checkpoints_per_owner);
  options.daemon.job_retention =
      job_retention_s > 0 ? absl::Seconds(job_retention_s) : absl::InfiniteDuration();
  options.daemon.caps.max_buffers = absl::GetFlag(FLAGS_max_buffers);
  options.daemon.caps.max_tensors = absl::GetFlag(FLAGS_max_tensors);
  options.daemon.max_tensors_per_owner = absl::GetFlag(FLAGS_max_tensors_per_owner);
  options.daemon.caps.max_bytes = absl::GetFlag(FLAGS_max_bytes);
  options.daemon.max_mappings = absl::GetFlag(FLAGS_max_mappings);
  options.daemon.max_mappings_per_owner = absl::GetFlag(FLAGS_max_mappings_per_owner);
  options.peers.max_connections_per_uid = absl::GetFlag(FLAGS_max_connections_per_uid);

  for (const std::string& u : absl::GetFlag(FLAGS_allow_uids)) {
    uint32_t id;
    if (!absl::SimpleAtoi(u, &id)) {
      std::fprintf(stderr, "gstabd: --allow_uids: '%s' is not a uid\n", u.c_str());
      return std::nullopt;
    }
    options.peers.uids.insert(id);
  }
  for (const std::string& g : absl::GetFlag(FLAGS_allow_gids)) {
    uint32_t id;
    if (!absl::SimpleAtoi(g, &id)) {
      std::fprintf(stderr, "gstabd: --allow_gids: '%s' is not a gid\n", g.c_str());
      return std::nullopt;
    }
    options.peers.gids.insert(id);
  }
  if (options.socket_path.empty() && !(options.peers.uids.empty() && options.peers.gids.empty())) {
    std::fprintf(stderr,
                 "gstabd: --allow_uids and --allow_gids are for the socket, and --socket= turns it "
                 "off\n");
    return std::nullopt;
  }
  return options;
}

}  // namespace gstab
