// gstabd's unix socket, with peer credentials checked before gRPC sees a connection
// (docs/daemon.md, Security). The listener owns the socket file (created mode 0660), accepts
// connections itself, reads the peer's uid and gid with SO_PEERCRED, and hands allowed connections
// to the gRPC server; others are closed and logged.
//
// Thread-safe; Stop() (or destruction) ends the accept thread and removes the socket file.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/path_lock.h"

namespace grpc {
class Server;
}

namespace gstab {

class MetricFamily;

// The credentials of each connection the listener handed to gRPC, by descriptor: gRPC names
// such a peer "fd:N" (ServerContext::peer()). An entry is replaced when its descriptor is
// reused by the next accepted connection; a live connection's entry is always its own. That
// holds because gRPC (1.51) closes a connection's descriptor only once every call on it has
// ended (closing the transport shuts it down): a call never sees its descriptor reused. A gRPC
// that closed it earlier would let a call read the next connection's credentials; check this
// at an upgrade.
class PeerTable {
 public:
  // `dev`, `inode`: the socket's identity (fstat), which Shutdown checks.
  void Set(int fd, const ucred& cred, dev_t dev = 0, ino_t inode = 0);
  // The credentials behind gRPC peer `peer`, or nullopt (a TCP peer, or unknown).
  std::optional<ucred> Find(const std::string& peer) const;
  // Shuts down the connection of gRPC peer `peer` (both ways), if its descriptor is still the
  // socket Set recorded; whether it did.
  bool Shutdown(const std::string& peer) const;

 private:
  struct Entry {
    ucred cred;
    dev_t dev;
    ino_t inode;
  };
  mutable absl::Mutex mu_;
  std::map<int, Entry> by_fd_ ABSL_GUARDED_BY(mu_);
};

// Who may connect. Empty sets mean "anyone the socket's mode lets in".
struct PeerPolicy {
  std::set<uid_t> uids;
  std::set<gid_t> gids;
  // Connections one uid may hold open at once (0: no cap). Each costs gstabd a descriptor, and
  // descriptors are shared by every user's connections and shared-memory mappings.
  int max_connections_per_uid = kDefaultMaxConnectionsPerUid;
  static constexpr int kDefaultMaxConnectionsPerUid = 512;
  // Where the allow-list and the cap come from, for the refused (gstabd's flags by default).
  std::string allow_source = "the allow-list (--allow_uids, --allow_gids)";
  std::string cap_source =
      "its cap (--max_connections_per_uid): close the clients it no longer "
      "uses, or raise the cap";
  // Whether a folder other users may write, without the sticky bit, is refused (see Create).
  // Not for the probes' socket: under Kubernetes its folder is an emptyDir of gstabd's pod
  // (mode 0777 or 1777 by the kubelet's version), which no other pod reaches.
  bool private_folder = true;
  bool Allows(uid_t uid, gid_t gid) const;
};

class UnixListener {
 public:
  // Binds `path` (replacing a stale socket file) with mode 0660 and starts listening. Holds
  // `path`.lock (PathLock) while it does, and until Stop(): ALREADY_EXISTS when another gstabd
  // holds it or serves on `path`.
  // Each accepted connection's credentials go to `peers` (which must outlive the listener).
  // Refused connections are counted in `refusals` (a counter labelled by reason; may be null).
  static absl::StatusOr<std::unique_ptr<UnixListener>> Create(const std::string& path,
                                                              PeerPolicy policy, PeerTable* peers,
                                                              MetricFamily* refusals = nullptr);
  ~UnixListener();
  UnixListener(const UnixListener&) = delete;
  UnixListener& operator=(const UnixListener&) = delete;

  // Starts accepting; allowed connections go to `server` (which must outlive Stop()).
  void Start(grpc::Server* server);
  void Stop();
  // After Stop(): shuts down (shutdown(2), both ways) each connection handed to gRPC that is
  // still open, under gRPC, which then fails its calls. A handler waiting to write to a peer that
  // stopped reading waits on HTTP/2 flow control, which cancelling its call does not end; this
  // does. Returns how many it shut down.
  int ShutdownConnections();

 private:
  UnixListener(std::string path, PathLock lock, int fd, ino_t inode, PeerPolicy policy,
               PeerTable* peers, MetricFamily* refusals)
      : path_(std::move(path)),
        lock_(std::move(lock)),
        fd_(fd),
        inode_(inode),
        policy_(std::move(policy)),
        peers_(peers),
        refusals_(refusals) {}
  // A socket bound at `path` (mode 0660) and listening: its descriptor and inode.
  static absl::StatusOr<std::pair<int, ino_t>> Bind(const std::string& path);
  // Keeps the path this gstabd's: makes the socket again when its file is gone (an operator's
  // rm, a worker's: nothing could connect any more, while gstabd looked healthy), and takes the
  // lock file again when it is gone. Why not, when it cannot (another file has the path,
  // another gstabd holds a new lock file). The accept thread's, once a second.
  absl::Status KeepPath();
  void AcceptLoop(grpc::Server* server);
  // Whether `uid` may open one more connection. Forgets its connections gRPC has closed since.
  bool UnderConnectionCap(uid_t uid);

  const std::string path_;
  std::optional<PathLock> lock_;  // let go of (and its file removed) at Stop()
  // The listening socket, and its file's inode, so that Stop removes this socket file, not a
  // successor's. The accept thread's while it runs (KeepPath replaces them).
  int fd_;
  ino_t inode_;
  const PeerPolicy policy_;
  PeerTable* const peers_;
  MetricFamily* const refusals_;
  // The connections handed to gRPC, by uid: descriptor and socket inode. The accept thread's
  // (ShutdownConnections reads it once Stop has joined that thread).
  struct Handed {
    int fd;
    dev_t dev;
    ino_t inode;
    // Whether gRPC has closed it since: the descriptor is no longer this socket (closed, or
    // reused by another).
    bool Gone() const;
  };
  std::map<uid_t, std::vector<Handed>> handed_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace gstab
