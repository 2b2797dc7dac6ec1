#include "common/listener_process.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/unix_connect.h"

namespace gstab {

ListenerProcess::ListenerProcess(const std::string& path) {
  const int fd = ConnectUnix(path);
  if (fd < 0) return;
  ucred cred{};
  socklen_t size = sizeof cred;
  const bool known = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &size) == 0 && cred.pid > 0;
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
