#include "server/unix_listener.h"

#include <fcntl.h>
#include <grpcpp/server.h>
#include <grpcpp/server_posix.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/folders.h"
#include "common/host_port.h"
#include "common/refusal.h"
#include "glog/logging.h"
#include "server/metrics.h"

namespace gstab {

void PeerTable::Set(int fd, const ucred& cred, dev_t dev, ino_t inode) {
  absl::MutexLock lock(&mu_);
  by_fd_[fd] = Entry{cred, dev, inode};
}

namespace {

// The descriptor of gRPC peer `peer` ("fd:N"), if it names one.
std::optional<int> PeerFd(const std::string& peer) {
  int fd = 0;
  if (!absl::StartsWith(peer, "fd:") || !absl::SimpleAtoi(peer.substr(3), &fd)) return std::nullopt;
  return fd;
}

// Whether descriptor `fd` is still the socket of identity (`dev`, `inode`): not closed, nor
// reused by another.
bool StillSocket(int fd, dev_t dev, ino_t inode) {
  struct stat st;
  return fstat(fd, &st) == 0 && st.st_dev == dev && st.st_ino == inode;
}

}  // namespace

std::optional<ucred> PeerTable::Find(const std::string& peer) const {
  const std::optional<int> fd = PeerFd(peer);
  if (!fd.has_value()) return std::nullopt;
  absl::MutexLock lock(&mu_);
  auto it = by_fd_.find(*fd);
  // Nor a descriptor closed and reused since (by a connection not handed over here, or by
  // another file): gRPC 1.51 closes none before its calls end, but that is its own doing.
  if (it == by_fd_.end() ||
      (it->second.inode != 0 && !StillSocket(*fd, it->second.dev, it->second.inode))) {
    return std::nullopt;
  }
  return it->second.cred;
}

bool PeerTable::Shutdown(const std::string& peer) const {
  const std::optional<int> fd = PeerFd(peer);
  if (!fd.has_value()) return false;
  absl::MutexLock lock(&mu_);  // no Set of a new connection on this descriptor meanwhile
  auto it = by_fd_.find(*fd);
  if (it == by_fd_.end() || !StillSocket(*fd, it->second.dev, it->second.inode)) return false;
  return shutdown(*fd, SHUT_RDWR) == 0;
}

bool PeerPolicy::Allows(uid_t uid, gid_t gid) const {
  if (uids.empty() && gids.empty()) return true;
  return uids.count(uid) > 0 || gids.count(gid) > 0;
}

absl::StatusOr<std::unique_ptr<UnixListener>> UnixListener::Create(const std::string& path,
                                                                   PeerPolicy policy,
                                                                   PeerTable* peers,
                                                                   MetricFamily* refusals) {
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "socket path '", path, "' is empty or longer than ", sizeof(addr.sun_path) - 1, " bytes"));
  }
  if (absl::Status s = CheckSocketPathForGrpc(path); !s.ok()) return s;
  const std::filesystem::path p(path);
  // Its folder, when gstabd makes it, is open to every user: the socket's own mode (0660, its
  // group) says who may connect.
  if (p.has_parent_path()) {
    if (absl::Status s = CreateFolders(p.parent_path().string(), 0755); !s.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot listen on '", path, "': ", s.message()));
    }
  }
  // In a folder other users may write (its group's, or anyone) without the sticky bit (/tmp has
  // it), or one of another user's (not root's: its owner may rename anything in it, sticky or
  // not), another user could swap the socket for a link between gstabd's bind and its chmod
  // (which follows links: gstabd, root, would change the mode of a file of that user's
  // choosing), or remove it.
  if (struct stat folder;
      policy.private_folder &&
      ::stat(p.has_parent_path() ? p.parent_path().c_str() : ".", &folder) == 0) {
    if ((folder.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (folder.st_mode & S_ISVTX) == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot listen on '", path, "': its folder is writable by other users (mode ",
          absl::StrFormat("%04o", folder.st_mode & 07777),
          ") and not sticky (they could replace or remove the socket): give --socket a folder "
          "only its owner may write (or one with the sticky bit, as /tmp)"));
    }
    if (folder.st_uid != 0 && folder.st_uid != ::geteuid()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot listen on '", path, "': its folder belongs to another user (uid ", folder.st_uid,
          "), who could replace or remove the socket: give --socket a folder of root's or of "
          "gstabd's user"));
    }
  }
  // Something other than a socket at the path is not a stale socket to replace (a mistyped
  // --socket naming a file would be deleted).
  if (struct stat st; ::lstat(path.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode)) {
    const char* kind = S_ISDIR(st.st_mode)    ? "a folder"
                       : S_ISLNK(st.st_mode)  ? "a symbolic link"
                       : S_ISFIFO(st.st_mode) ? "a FIFO"
                       : S_ISREG(st.st_mode)  ? "a file"
                                              : "a device";
    return absl::FailedPreconditionError(
        absl::StrCat("'", path, "' is ", kind,
                     ", not a socket: give --socket a path where gstabd may make its socket"));
  }
  // From here to the bind, a gstabd starting at the same moment would find no live socket
  // either, and one of the two would remove the other's new one as a leftover.
  absl::StatusOr<PathLock> lock = PathLock::Take(path + ".lock");
  if (absl::IsAlreadyExists(lock.status())) {
    return absl::AlreadyExistsError(
        absl::StrCat("another process (a gstabd?) is starting or serves on '", path, "' (",
                     lock.status().message(),
                     "): stop it first, or give this one another --socket (and "
                     "--state_dir)"));
  }
  if (!lock.ok()) return lock.status();
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  // A socket a live process accepts on is another gstabd's: taking its path over would cut
  // its workers off from it while it runs on. Only a dead one's leftover file (ECONNREFUSED) is
  // replaced. Without blocking: one that is alive but not accepting (stopped, its backlog full)
  // says EAGAIN. Any other answer leaves the path alone: a live socket of another kind (a
  // datagram one, as journald's: EPROTOTYPE) or one this user may not connect to (EACCES, as
  // another user's gstabd's in a shared folder).
  const int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (probe < 0) return absl::InternalError(absl::StrCat("socket(): ", strerror(errno)));
  const int connected = connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  const int probed = connected == 0 ? 0 : errno;
  close(probe);
  if (probed == 0 || probed == EAGAIN || probed == EINPROGRESS) {
    return absl::AlreadyExistsError(
        absl::StrCat("another process (a gstabd?) serves on '", path,
                     "': stop it first, or give this one another --socket (and --state_dir)"));
  }
  if (probed != ECONNREFUSED && probed != ENOENT) {
    return absl::FailedPreconditionError(absl::StrCat(
        "'", path, "' is a socket gstabd cannot tell for a leftover (connecting to it: ",
        strerror(probed), "): remove it if no process uses it, or give --socket another path"));
  }
  std::error_code ec;
  std::filesystem::remove(p, ec);  // a stale socket of a previous run
  absl::StatusOr<std::pair<int, ino_t>> bound = Bind(path);
  if (!bound.ok()) return bound.status();
  return std::unique_ptr<UnixListener>(new UnixListener(
      path, *std::move(lock), bound->first, bound->second, std::move(policy), peers, refusals));
}

absl::StatusOr<std::pair<int, ino_t>> UnixListener::Bind(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);  // its length checked by Create
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket(): ", strerror(errno)));
  // Made 0660 before it listens: a socket that does not listen refuses every connection, so
  // there is no moment where other users could connect (the process-wide umask, which other
  // threads' files would take, is left alone).
  struct stat st;
  const bool bound = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  if (!bound || chmod(path.c_str(), 0660) != 0 || listen(fd, 128) != 0 ||
      stat(path.c_str(), &st) != 0) {
    const std::string err = strerror(errno);
    close(fd);
    // The file bind made goes too (the path's lock is this gstabd's): left, it would be taken
    // for another process's socket when the path is made again.
    if (bound) unlink(path.c_str());
    return absl::UnavailableError(absl::StrCat("cannot listen on '", path, "': ", err));
  }
  return std::make_pair(fd, st.st_ino);
}

absl::Status UnixListener::KeepPath() {
  struct stat st;
  const bool there = ::lstat(path_.c_str(), &st) == 0;
  if (!there && errno != ENOENT) return absl::OkStatus();  // cannot tell
  if (there && st.st_ino != inode_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "gstabd's socket ", path_,
        " was removed, and another file has taken its path since (another gstabd's socket, "
        "started meanwhile?): workers reach that one, not this gstabd; stop one of the two"));
  }
  // The lock file may have been removed alone, or with the folder: taken again, unless another
  // gstabd has started there meanwhile.
  auto relock = [&]() -> absl::Status {
    if (lock_->Held()) return absl::OkStatus();
    absl::StatusOr<PathLock> lock = PathLock::Take(path_ + ".lock");
    if (!lock.ok()) {
      return absl::Status(lock.status().code(),
                          absl::StrCat("gstabd's lock file ", path_, ".lock was removed, and ",
                                       lock.status().message()));
    }
    lock_.emplace(*std::move(lock));
    return absl::OkStatus();
  };
  if (there) return relock();
  const std::filesystem::path p(path_);
  if (p.has_parent_path()) {
    if (absl::Status s = CreateFolders(p.parent_path().string(), 0755); !s.ok()) {
      return absl::Status(
          s.code(), absl::StrCat("gstabd's socket ", path_, " was removed, and: ", s.message()));
    }
  }
  if (absl::Status s = relock(); !s.ok()) return s;
  absl::StatusOr<std::pair<int, ino_t>> bound = Bind(path_);
  if (!bound.ok()) {
    return absl::Status(
        bound.status().code(),
        absl::StrCat("gstabd's socket ", path_, " was removed, and ", bound.status().message()));
  }
  close(fd_);  // the connections it took stay open
  fd_ = bound->first;
  inode_ = bound->second;
  LOG(WARNING) << "gstabd's socket " << path_
               << " was removed while gstabd served on it (by whom? workers reach gstabd through "
                  "it alone): made it again; workers connect again at their next call";
  return absl::OkStatus();
}

UnixListener::~UnixListener() { Stop(); }

void UnixListener::Start(grpc::Server* server) {
  thread_ = std::thread([this, server] { AcceptLoop(server); });
}

void UnixListener::Stop() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
    struct stat st;
    if (stat(path_.c_str(), &st) == 0 && st.st_ino == inode_) unlink(path_.c_str());
  }
  lock_.reset();
}

bool UnixListener::Handed::Gone() const { return !StillSocket(fd, dev, inode); }

int UnixListener::ShutdownConnections() {
  // gRPC may close a connection meanwhile, and its descriptor be taken by another socket
  // between the check and the shutdown: a window of two system calls, during a stop. Holding a
  // duplicate of each descriptor would close that window, but would also keep every closed
  // connection open for its peer.
  int shut = 0;
  for (const auto& [uid, connections] : handed_) {
    for (const Handed& h : connections) {
      if (!h.Gone() && shutdown(h.fd, SHUT_RDWR) == 0) ++shut;
    }
  }
  return shut;
}

bool UnixListener::UnderConnectionCap(uid_t uid) {
  std::vector<Handed>& open = handed_[uid];
  open.erase(std::remove_if(open.begin(), open.end(), [](const Handed& h) { return h.Gone(); }),
             open.end());
  return policy_.max_connections_per_uid <= 0 ||
         static_cast<int>(open.size()) < policy_.max_connections_per_uid;
}

void UnixListener::AcceptLoop(grpc::Server* server) {
  absl::Time last_logged = absl::InfinitePast();
  uint64_t refused = 0;  // connections refused since the last line about them
  // At most one line a second: a process that connects in a loop must not fill the log.
  auto refuse = [&](int conn, const ucred& cred, const std::string& reason,
                    const std::string& why) {
    SendRefusal(conn, reason, why);  // what the client library reports, rather than a timeout
    close(conn);
    if (refusals_ != nullptr) refusals_->Add({reason}, 1);
    ++refused;
    if (const absl::Time now = absl::Now(); now - last_logged >= absl::Seconds(1)) {
      LOG(WARNING) << "refused a connection from pid " << cred.pid << " uid " << cred.uid << " gid "
                   << cred.gid << ": " << why
                   << (refused > 1
                           ? absl::StrCat(" (", refused, " refused since the last such line)")
                           : "");
      last_logged = now;
      refused = 0;
    }
  };
  absl::Time looked = absl::Now();
  std::string not_kept;  // why KeepPath failed, as last logged
  while (!stopping_) {
    if (const absl::Time now = absl::Now(); now - looked >= absl::Seconds(1)) {
      looked = now;
      absl::Status s = KeepPath();
      if (!s.ok() && std::string(s.message()) != not_kept) {
        LOG(ERROR) << s.message() << " (gstabd looks again every second)";
      }
      not_kept = s.ok() ? "" : std::string(s.message());
    }
    pollfd pfd{fd_, POLLIN, 0};
    if (poll(&pfd, 1, 100) <= 0) continue;
    const int conn = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) {
      if (errno == EMFILE || errno == ENFILE) {
        // Out of descriptors: the connection waits in the backlog; do not spin on it.
        LOG_EVERY_N(WARNING, 100) << "cannot accept a connection: " << strerror(errno);
        absl::SleepFor(absl::Milliseconds(100));
      }
      continue;
    }
    ucred cred{};
    socklen_t len = sizeof cred;
    struct stat st;
    if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || fstat(conn, &st) != 0) {
      refuse(conn, cred, "not_allowed",
             absl::StrCat("its credentials could not be read (", strerror(errno), ")"));
      continue;
    }
    if (!policy_.Allows(cred.uid, cred.gid)) {
      refuse(
          conn, cred, "not_allowed",
          absl::StrCat("uid ", cred.uid, " gid ", cred.gid, " is not in ", policy_.allow_source));
      continue;
    }
    if (!UnderConnectionCap(cred.uid)) {
      refuse(conn, cred, "per_uid_cap",
             absl::StrCat("uid ", cred.uid, " already holds ", policy_.max_connections_per_uid,
                          " connections, ", policy_.cap_source));
      continue;
    }
    handed_[cred.uid].push_back({conn, st.st_dev, st.st_ino});
    // gRPC needs a non-blocking descriptor.
    fcntl(conn, F_SETFL, fcntl(conn, F_GETFL) | O_NONBLOCK);
    peers_->Set(conn, cred, st.st_dev, st.st_ino);  // before gRPC can serve a call on it
    grpc::AddInsecureChannelFromFd(server, conn);
  }
}

}  // namespace gstab
