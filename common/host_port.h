// HOST:PORT as gstab takes it, in gstabd's flags and the clients' addresses: a name or IPv4
// address ("node1:7479", "10.0.0.5:7479"), an IPv6 address in brackets ("[fd00::5]:7479"), or
// one without them ("fd00::5:7479", as a pod's $(POD_IP):7479 renders on an IPv6 cluster). The
// port is what follows the last colon, so an IPv6 address whose port was left out reads as one
// with a port: "fd00::1:5" is fd00::1, port 5.
#pragma once

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace gstab {

struct HostPort {
  std::string host;  // without brackets
  std::string port;  // 0 to 65535, in digits
};

// nullopt unless `address` is a host and a port as above (a host with a colon must be an IPv6
// address).
std::optional<HostPort> SplitHostPort(absl::string_view address);

// "host:port", the host in brackets when it is an IPv6 address (has a colon), as gRPC dials
// and listens.
std::string JoinHostPort(absl::string_view host, absl::string_view port);

// INVALID_ARGUMENT for a unix socket path with '?', '#' or '%': gRPC dials such a path as a
// "unix:" URI, which reads them as a query, a fragment or an escape, so that no client would
// reach a socket there (a connect would wait out its timeout).
absl::Status CheckSocketPathForGrpc(absl::string_view path);

}  // namespace gstab
