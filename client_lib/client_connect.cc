// gstab::Client's connection to gstabd (Connect): the checks that say at once what a worker
// cannot do (a socket path too long or not a socket, no permission, too few descriptors, a
// forked child), the wait for gstabd, its refusals, and the health check.
#include <fcntl.h>
#include <grp.h>
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client_lib/client.h"
#include "client_lib/transport.h"
#include "common/environment.h"
#include "common/host_port.h"
#include "common/refusal.h"
#include "common/wire_limits.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace gstab {
namespace {

// What a process refused gstabd's socket needs, naming the socket's group when it can be read.
std::string SocketGroup(const std::string& socket_path) {
  struct stat st;
  if (::stat(socket_path.c_str(), &st) != 0) {
    return "a folder on its path may not be searched by this process";
  }
  std::string group = absl::StrCat("gid ", st.st_gid);
  // Reentrant: the calling program's other threads may look up groups meanwhile.
  struct group entry;
  struct group* g = nullptr;
  std::vector<char> buffer(16384);
  if (::getgrgid_r(st.st_gid, &entry, buffer.data(), buffer.size(), &g) == 0 && g != nullptr) {
    group = absl::StrCat("'", g->gr_name, "' (gid ", st.st_gid, ")");
  }
  return absl::StrCat("it is created mode 0660, so the worker needs its group ", group,
                      " among its groups (Kubernetes: runAsGroup or supplementalGroups), or to "
                      "run as its owner");
}

// The process that first connected a client: gRPC's threads and connections do not survive a
// fork, so a forked child's calls would wait forever, or go down its parent's connection.
std::atomic<pid_t> grpc_process{0};

absl::Status NotAForkedChild() {
  const pid_t me = getpid();
  pid_t first = 0;
  if (grpc_process.compare_exchange_strong(first, me) || first == me) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "this process (", me, ") was forked from one that had connected to gstabd (", first,
      "), and gRPC does not work in a forked child (its calls would hang, or go down its "
      "parent's connection): start workers anew (exec; Python: multiprocessing's 'spawn' or "
      "'forkserver', torchrun), or connect in the children only"));
}

// RESOURCE_EXHAUSTED when the process has too few file descriptors left to connect: gRPC aborts
// the process when its first channel cannot get its own (an epoll set, a wake-up eventfd), and
// with one or two left the connection itself fails, as if no gstabd were there.
absl::Status CheckDescriptorsFree() {
  constexpr int kNeeded = 8;
  std::vector<int> fds;
  int error = 0;
  while (fds.size() < kNeeded) {
    const int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      error = errno;
      break;
    }
    fds.push_back(fd);
  }
  for (int fd : fds) close(fd);
  if (error != EMFILE && error != ENFILE) return absl::OkStatus();
  struct rlimit limit = {};
  getrlimit(RLIMIT_NOFILE, &limit);
  return absl::ResourceExhaustedError(
      absl::StrCat("this process has ", fds.size(), " file descriptors free (", strerror(error),
                   "; its limit is ", limit.rlim_cur, "), and connecting to gstabd takes ", kNeeded,
                   ": close files, or raise the limit (ulimit -n)"));
}

// A relative socket path as an absolute one: gRPC connects anew (after a gstabd restart) from
// the working folder of that moment, which the process may have changed since. One that would
// be too long for a socket address (or one gRPC would misread) stays as it is.
std::string FromWorkingFolder(const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  char cwd[PATH_MAX];
  if (getcwd(cwd, sizeof cwd) == nullptr) return path;
  std::string absolute = absl::StrCat(cwd, cwd[1] == '\0' ? "" : "/", path);
  return CheckAddress(absolute).ok() ? absolute : path;
}

}  // namespace

void Client::ReconnectIfBackingOff() {
  if (channel_->GetState(false) == GRPC_CHANNEL_TRANSIENT_FAILURE) Reconnect();
}

void Client::Reconnect() {
  grpc::experimental::ChannelResetConnectionBackoff(channel_.get());
  // Calls that fail fast poll nothing: without a wait here the new connection's handshake would
  // only complete at gRPC's backup poll, up to 5 s later.
  channel_->WaitForConnected(absl::ToChronoTime(absl::Now() + absl::Milliseconds(200)));
}

namespace {

// A connect whose health check answered UNAVAILABLE (`why`) until its timeout.
absl::Status HealthFailed(const std::string& address, absl::Duration timeout,
                          const std::string& why) {
  return absl::UnavailableError(absl::StrCat(
      "gstabd at ", address, " took the connection, but its health check failed until the ",
      absl::FormatDuration(timeout), " connect timeout (", why,
      "): connect again once gstabd serves"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& given,
                                                        absl::Duration timeout) {
  std::string address = given.empty() ? SocketFromEnvironment() : given;
  const bool tcp = IsTcpAddress(address);
  if (absl::Status s = CheckAddress(address); !s.ok()) return s;
  if (!tcp) address = FromWorkingFolder(address);
  if (absl::Status s = CheckDescriptorsFree(); !s.ok()) return s;
  // Read by the client (its calls' deadline) once connected: checked here.
  if (absl::StatusOr<std::optional<int>> call_timeout = CallTimeoutFromEnvironment();
      !call_timeout.ok()) {
    return call_timeout.status();
  }
  std::string target = absl::StrCat("unix:", address);
  if (tcp) {
    const std::optional<HostPort> at = SplitHostPort(address);  // checked above
    target = JoinHostPort(at->host, at->port);  // brackets an IPv6 host, as gRPC reads it
  }
  // Something else at the path is no gstabd starting (which makes a socket there): at once.
  if (struct stat st; !tcp && ::stat(address.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", address, "' is ", S_ISDIR(st.st_mode) ? "a folder" : "a file",
                     ", not a socket: give the path of gstabd's socket (its --socket)"));
  }
  if (!tcp && ::faccessat(AT_FDCWD, address.c_str(), R_OK | W_OK, AT_EACCESS) != 0 &&
      errno == EACCES) {
    // At once rather than after `timeout`: with this process's effective ids and capabilities.
    return absl::PermissionDeniedError(
        absl::StrCat("this process may not use gstabd's socket ", address,
                     " (permission denied): ", SocketGroup(address)));
  }
  // A call in flight whose gstabd stops answering (its host gone, the process stopped) ends once
  // a ping goes unanswered: a followed event stream has no deadline of its own. Pinged only while
  // a call is in flight; an idle stream sends no data, so no cap on pings without. Every 5 min
  // by default: what gRPC servers take by default (gstabd takes one a second), so that a gstabd
  // of an earlier release does not close a quiet stream for too many pings.
  const absl::StatusOr<std::optional<int>> ping_ms =
      CheckedFromEnvironment("GSTAB_KEEPALIVE_MS", 1000, "how long (ms) a call waits to ping");
  if (!ping_ms.ok()) return ping_ms.status();
  const absl::StatusOr<std::optional<int>> ping_timeout_ms = CheckedFromEnvironment(
      "GSTAB_KEEPALIVE_TIMEOUT_MS", 1000, "how long (ms) a ping waits for its answer");
  if (!ping_timeout_ms.ok()) return ping_timeout_ms.status();
  std::optional<TlsSettings> tls;
  if (tcp) {
    absl::StatusOr<TlsSettings> settings = TlsSettingsFromEnvironment(address);
    if (!settings.ok()) return settings.status();
    tls = *std::move(settings);
  }
  // From here on gRPC is used (the checks above leave a forked child free to connect).
  if (absl::Status s = NotAForkedChild(); !s.ok()) return s;
  // A job's exported state and statistics grow with its groups (up to 65536): past gRPC's
  // default 4 MiB.
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, ping_ms->value_or(300000));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, ping_timeout_ms->value_or(20000));
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  const std::shared_ptr<grpc::ChannelCredentials> credentials =
      tls.has_value() ? TlsCredentials(*tls, &args) : grpc::InsecureChannelCredentials();
  auto channel = grpc::CreateCustomChannel(target, credentials, args);
  // A channel of its own connections (not shared with the process's other channels): what
  // reaches a new gstabd while another channel's connection to a stopping one is still open.
  grpc::ChannelArguments own_args = args;
  own_args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  const absl::Time deadline = absl::Now() + timeout;
  bool connected = false;
  bool probe = !tcp;
  // A short first wait: a refused connection is said at once (below), a taken one is quick.
  absl::Duration slice = absl::Milliseconds(250);
  do {
    connected =
        channel->WaitForConnected(absl::ToChronoTime(std::min(deadline, absl::Now() + slice)));
    slice = absl::Seconds(1);
    if (connected || !probe) continue;
    // A gstabd that refuses this process (its allow-list, its per-uid cap) closes each
    // connection at once, which gRPC would retry until `deadline`: it says why on a connection
    // of our own, worth a moment past `deadline`. One that says nothing (busy, or frozen) is
    // not asked again: each probe would wait in its backlog.
    bool silent = false;
    std::optional<absl::Status> refused = ProbeRefusal(
        address, std::clamp(deadline - absl::Now(), absl::Milliseconds(250), absl::Seconds(1)),
        &silent);
    if (refused.has_value()) return *std::move(refused);
    probe = !silent;
  } while (!connected && absl::Now() < deadline);
  if (!connected) {
    if (tcp) {
      return absl::UnavailableError(absl::StrCat(
          "no gstabd answers on ", address,
          " over mutual TLS: does a gstabd listen there (--listen)? Its certificate must be "
          "signed by GSTAB_TLS_CA and name the host dialled (or GSTAB_TLS_NAME), and this "
          "client's (GSTAB_TLS_CERT) by the CA of gstabd's --tls_client_ca; gstabd refuses "
          "other certificates and clients without one"));
    }
    struct stat st;
    const bool there = ::stat(address.c_str(), &st) == 0;
    return absl::UnavailableError(absl::StrCat(
        "no gstabd answers on ", address, there ? "" : " (nothing is there)",
        ": is the daemon running, and is the socket path right? (An older gstabd closes the "
        "connections its allow-list refuses, or past its per-uid cap, without saying so here: "
        "its log says why)"));
  }
  std::unique_ptr<Client> client(new Client(std::move(channel), target));
  // gRPC shares connections between the channels of a process: one that another client made to
  // a gstabd since replaced still looks ready, or one to a gstabd now stopping (NOT_SERVING,
  // while a new gstabd may already listen at the path: a channel of its own connections goes
  // there). A first call finds out, and connects anew until `deadline`.
  bool stopping = false;      // at the last answer
  bool saw_stopping = false;  // at any answer
  // Between connections tried anew while gstabd stops: each is a connection (over TCP a TLS
  // handshake) to a gstabd that may drain for minutes; a new one at the path is reached within
  // a second of serving.
  absl::Duration pause = absl::Milliseconds(200);
  std::string unavailable;  // the last UNAVAILABLE answer's message, if any
  for (;;) {
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status s =
        client->AskHealth(std::min(deadline, absl::Now() + absl::Seconds(5)), &response);
    if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && !stopping) {
      if (absl::Now() < deadline) continue;  // each check waits 5 s at most
      if (!unavailable.empty()) {  // the last ask, cut short by the deadline, told nothing new
        return HealthFailed(address, timeout, unavailable);
      }
      // Its first call would wait minutes for it (the call timeout).
      return absl::UnavailableError(
          absl::StrCat("gstabd at ", address, " took the connection but did not answer within ",
                       absl::FormatDuration(timeout),
                       " (stopped, or stuck?): its health check and log say more"));
    }
    if (s.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      // Every gstabd serves gRPC's health service: its first call would say "unknown service".
      return absl::FailedPreconditionError(
          absl::StrCat("the server at ", address,
                       " is not gstabd (it serves no gRPC health service): give the address of "
                       "gstabd's socket (its --socket) or TCP port (its --listen)"));
    }
    if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
      // gstabd's health service knows the server's own service (""); another's may not.
      return absl::FailedPreconditionError(
          absl::StrCat("the server at ", address,
                       " is not gstabd (its health service does not know the server's own, \"\": ",
                       s.error_message(),
                       "): give the address of gstabd's socket (its --socket) "
                       "or TCP port (its --listen)"));
    }
    if (s.error_code() == grpc::StatusCode::PERMISSION_DENIED ||
        s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
      // Its first call would be refused the same way.
      return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                          absl::StrCat("the server at ", address,
                                       " refused this client's health check: ", s.error_message()));
    }
    if (s.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
      // A CANCELLED check: gstabd's server stopping under it, as calls read it (Client::Call).
      stopping = (s.ok() && response.status() != grpc::health::v1::HealthCheckResponse::SERVING) ||
                 s.error_code() == grpc::StatusCode::CANCELLED;
      saw_stopping = saw_stopping || stopping;
    }
    if ((stopping || (saw_stopping && s.error_code() == grpc::StatusCode::UNAVAILABLE)) &&
        absl::Now() >= deadline) {
      return absl::UnavailableError(
          absl::StrCat("gstabd at ", address,
                       " is not serving (stopping), and no other gstabd answered there "
                       "within ",
                       absl::FormatDuration(timeout), ": connect again once one serves"));
    }
    if (!stopping && s.ok()) break;
    if (!stopping && s.error_code() != grpc::StatusCode::UNAVAILABLE) {
      // Any other failure of the check (RESOURCE_EXHAUSTED, INTERNAL...): not a client to
      // hand back, whose first call would fail the same way.
      return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                          absl::StrCat("gstabd at ", address,
                                       " failed this client's health check: ", s.error_message()));
    }
    if (!stopping) {
      unavailable = s.error_message();
      // The connection went (gstabd gone since it took it) and no gstabd took another: its
      // first call would fail the same way.
      if (absl::Now() >= deadline) return HealthFailed(address, timeout, unavailable);
      absl::SleepFor(std::min(absl::Milliseconds(50), deadline - absl::Now()));
    }
    if (stopping) {
      // Woken 200 ms before the deadline at the latest, so that the last wait still asks.
      absl::SleepFor(std::min(pause, std::max(absl::Milliseconds(50),
                                              deadline - absl::Now() - absl::Milliseconds(200))));
      pause = std::min(2 * pause, absl::Seconds(1));
      client.reset(new Client(grpc::CreateCustomChannel(target, credentials, own_args), target));
      continue;
    }
    client->Reconnect();
  }
  return client;
}

grpc::Status Client::AskHealth(absl::Time deadline,
                               grpc::health::v1::HealthCheckResponse* response) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(deadline));
  return health->Check(&ctx, grpc::health::v1::HealthCheckRequest(), response);
}

absl::Status Client::CheckHealth(absl::Duration timeout) {
  grpc::health::v1::HealthCheckResponse response;
  if (absl::Status s = FromGrpcStatus(AskHealth(absl::Now() + timeout, &response)); !s.ok()) {
    return s;
  }
  if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    return absl::UnavailableError("gstabd is not serving (shutting down?)");
  }
  return absl::OkStatus();
}

}  // namespace gstab
