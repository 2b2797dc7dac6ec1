// The process that serves a Unix socket, to tell for certain when it has exited: its pid from
// the socket's peer credentials (SO_PEERCRED gives the listener's), held as a pidfd, which no
// later process can take over the way a pid number can be reused.
#pragma once

#include <string>

namespace gstab {

class ListenerProcess {
 public:
  // Watches the process listening at `path`; watches nothing (Watching() false) when none
  // answers there, its pid is not visible from this process's pid namespace, or this kernel has
  // no pidfds (before Linux 5.3).
  explicit ListenerProcess(const std::string& path);
  ~ListenerProcess();
  ListenerProcess(const ListenerProcess&) = delete;
  ListenerProcess& operator=(const ListenerProcess&) = delete;

  bool Watching() const { return pidfd_ >= 0; }
  // Whether the process watched has exited (false when none is watched).
  bool Exited() const;

 private:
  int pidfd_ = -1;
};

}  // namespace gstab
