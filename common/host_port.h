// HOST:PORT as gstabd's flags take it: a name or IPv4 address ("node1:7479", "10.0.0.5:7479"),
// an IPv6 address in brackets ("[fd00::5]:7479"), or one without them ("fd00::5:7479", as a
// pod's $(POD_IP):7479 renders on an IPv6 cluster): the port is what follows the last colon.
#pragma once

#include <algorithm>
#include <cctype>
#include <optional>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace gstab {

struct HostPort {
  std::string host;  // without brackets
  std::string port;  // digits
};

// nullopt when `address` has no host or no numeric port.
inline std::optional<HostPort> SplitHostPort(absl::string_view address) {
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || colon == 0 || colon + 1 == address.size()) {
    return std::nullopt;
  }
  absl::string_view host = address.substr(0, colon);
  const absl::string_view port = address.substr(colon + 1);
  if (!std::all_of(port.begin(), port.end(),
                   [](unsigned char c) { return std::isdigit(c) != 0; })) {
    return std::nullopt;
  }
  if (absl::StartsWith(host, "[") && absl::EndsWith(host, "]")) {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) return std::nullopt;
  return HostPort{std::string(host), std::string(port)};
}

// "host:port", the host in brackets when it is an IPv6 address (has a colon), as gRPC dials
// and listens.
inline std::string JoinHostPort(absl::string_view host, absl::string_view port) {
  return host.find(':') == absl::string_view::npos ? absl::StrCat(host, ":", port)
                                                   : absl::StrCat("[", host, "]:", port);
}

}  // namespace gstab
