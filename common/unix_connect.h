// A client's own connection to a Unix socket, outside gRPC: what the client library's refusal
// probe and its watch of gstabd's process share.
#pragma once

#include <string>

namespace gstab {

// A non-blocking descriptor connected to the Unix socket at `path`, or -1 (errno set) when the
// path is empty or too long, nobody listens there, or its backlog is full (a frozen listener's:
// the connect does not wait). The caller closes it.
int ConnectUnix(const std::string& path);

}  // namespace gstab
