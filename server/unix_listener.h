// gstabd's unix socket, with peer credentials checked before gRPC sees a connection
// (DESIGN.md 2.7). The listener owns the socket file (created mode 0660), accepts connections
// itself, reads the peer's uid and gid with SO_PEERCRED, and hands allowed connections to the
// gRPC server; others are closed and logged.
//
// Thread-safe; Stop() (or destruction) ends the accept thread and removes the socket file.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace grpc {
class Server;
}

namespace gstab {

// Who may connect. Empty sets mean "anyone the socket's mode lets in".
struct PeerPolicy {
  std::set<uid_t> uids;
  std::set<gid_t> gids;
  bool Allows(uid_t uid, gid_t gid) const;
};

class UnixListener {
 public:
  // Binds `path` (replacing a stale socket file) with mode 0660 and starts listening.
  static absl::StatusOr<std::unique_ptr<UnixListener>> Create(const std::string& path,
                                                              PeerPolicy policy);
  ~UnixListener();
  UnixListener(const UnixListener&) = delete;
  UnixListener& operator=(const UnixListener&) = delete;

  // Starts accepting; allowed connections go to `server` (which must outlive Stop()).
  void Start(grpc::Server* server);
  void Stop();

 private:
  UnixListener(std::string path, int fd, ino_t inode, PeerPolicy policy)
      : path_(std::move(path)), fd_(fd), inode_(inode), policy_(std::move(policy)) {}
  void AcceptLoop(grpc::Server* server);

  const std::string path_;
  int fd_;
  const ino_t inode_;  // so Stop removes this socket file, not a successor's
  const PeerPolicy policy_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace gstab
