#include "common/listener_process.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

namespace gstab {

ListenerProcess::ListenerProcess(const std::string& path) {
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof addr.sun_path) return;
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return;
  ucred cred{};
  socklen_t size = sizeof cred;
  const bool known = connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0 &&
                     getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &size) == 0 && cred.pid > 0;
  close(fd);
  if (!known) return;
  const long pidfd = syscall(SYS_pidfd_open, cred.pid, 0);
  if (pidfd >= 0) pidfd_ = static_cast<int>(pidfd);
}

ListenerProcess::~ListenerProcess() {
  if (pidfd_ >= 0) close(pidfd_);
}

bool ListenerProcess::Exited() const {
  if (pidfd_ < 0) return false;
  pollfd pfd{pidfd_, POLLIN, 0};
  return poll(&pfd, 1, 0) > 0;  // a pidfd reads ready once its process has exited
}

}  // namespace gstab
