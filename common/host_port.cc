#include "common/host_port.h"

#include <arpa/inet.h>

#include <cstdint>

#include "absl/algorithm/container.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace gstab {

std::optional<HostPort> SplitHostPort(absl::string_view address) {
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos) return std::nullopt;
  absl::string_view host = address.substr(0, colon);
  const absl::string_view port = address.substr(colon + 1);
  uint32_t number = 0;
  if (port.empty() || !absl::c_all_of(port, [](char c) { return c >= '0' && c <= '9'; }) ||
      !absl::SimpleAtoi(port, &number) || number > 65535) {
    return std::nullopt;
  }
  const bool bracketed = absl::StartsWith(host, "[") && absl::EndsWith(host, "]");
  if (bracketed) host = host.substr(1, host.size() - 2);
  if (host.empty() || absl::StrContains(host, '[') || absl::StrContains(host, ']')) {
    return std::nullopt;
  }
  const size_t zone = host.find('%');
  if (absl::StrContains(host, ':') || bracketed) {
    // An IPv6 address, maybe scoped to an interface (fe80::1%eth0), which gRPC takes too.
    if (zone + 1 == host.size()) return std::nullopt;
    in6_addr v6;
    if (inet_pton(AF_INET6, std::string(host.substr(0, zone)).c_str(), &v6) != 1) {
      return std::nullopt;
    }
  } else if (zone != absl::string_view::npos) {
    return std::nullopt;  // a zone without an IPv6 address
  }
  return HostPort{std::string(host), std::string(port)};
}

std::string JoinHostPort(absl::string_view host, absl::string_view port) {
  return absl::StrContains(host, ':') ? absl::StrCat("[", host, "]:", port)
                                      : absl::StrCat(host, ":", port);
}

absl::Status CheckSocketPathForGrpc(absl::string_view path) {
  if (const size_t at = path.find_first_of("?#%"); at != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("socket path '", path, "' has '", path.substr(at, 1),
                     "', which gRPC's clients read as part of a URI and would not reach it: "
                     "use a path without '?', '#' or '%'"));
  }
  return absl::OkStatus();
}

}  // namespace gstab
