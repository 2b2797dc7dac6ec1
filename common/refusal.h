// How gstabd tells a process why it closed its connection at once (its allow-list, its
// per-uid cap), and how the client library reads it back: gRPC only sees a connection that
// closed, and would retry it until its connect timeout.
//
// gstabd writes one line, "gstabd refused this connection (REASON): WHY\n", before it closes a
// connection it refuses. A client that cannot connect opens one connection of its own and reads
// what comes back.
#pragma once

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace gstab {

// Writes the line to `fd` without blocking (a connection just accepted has room for it).
void SendRefusal(int fd, absl::string_view reason, absl::string_view why);

// Connects to the Unix socket at `path` (without waiting: a full backlog, a frozen gstabd's, is
// nobody listening) and waits up to `wait` for a refusal line. The refusal as an error
// (PERMISSION_DENIED for the allow-list, RESOURCE_EXHAUSTED for the per-uid cap), or nothing
// when the connection was taken, nothing answered, or nobody listens. `*silent` (optional) is
// set when it connected and nothing came within `wait` (gstabd busy or frozen: a later probe
// would only add to its backlog).
std::optional<absl::Status> ProbeRefusal(const std::string& path, absl::Duration wait,
                                         bool* silent = nullptr);

}  // namespace gstab
