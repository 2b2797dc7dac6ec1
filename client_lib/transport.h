// How a client reaches gstabd: its unix socket (a path), or its TCP port (HOST:PORT, gstabd run
// with --listen), which takes mutual TLS with PEM files named by the environment:
//   GSTAB_TLS_CA    the CA that signs gstabd's certificate
//   GSTAB_TLS_CERT  this client's certificate (chain), signed by gstabd's --tls_client_ca
//   GSTAB_TLS_KEY   its private key
//   GSTAB_TLS_NAME  the name gstabd's certificate carries, when not the host dialled (optional)
//   GSTAB_TLS_RELOAD_S  how often the three files are read again (60 when unset): a client
//                   connects again (gstabd restarted, say) with the files as they are then,
//                   certificates renewed in place included
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace grpc {
class ChannelArguments;
class ChannelCredentials;
}  // namespace grpc

namespace gstab {

// Where gstabd is when the caller names no address: $GSTAB_SOCKET when set, else the socket the
// Helm chart and the systemd unit give it (kDefaultSocket), as gstabctl and Python dial.
inline constexpr char kDefaultSocket[] = "/run/gstab/gstabd.sock";
std::string SocketFromEnvironment();

// Whether `address` is meant as gstabd's TCP port (HOST:PORT, common/host_port.h) rather than a
// socket path: it has no '/' and ends in ':' and digits (a socket named so in the current
// folder: ./name:1).
bool IsTcpAddress(const std::string& address);

// INVALID_ARGUMENT, saying why, when `address` can be neither: HOST:PORT with a bad port, or a
// socket path longer than a unix socket's may be.
absl::Status CheckAddress(const std::string& address);

// The TLS settings of the environment above, checked without gRPC (a forked child may still
// connect after a failure here). INVALID_ARGUMENT naming the variable that is unset (or
// GSTAB_TLS_RELOAD_S when it is not a count of seconds), FAILED_PRECONDITION naming one whose
// file is not readable PEM; `address` is for the messages.
struct TlsSettings {
  std::string ca, cert, key;  // PEM file paths
  unsigned reload_s = 60;
  std::string target_name;  // GSTAB_TLS_NAME; empty: the host dialled
};
absl::StatusOr<TlsSettings> TlsSettingsFromEnvironment(const std::string& address);

// The channel credentials of `settings` (a target-name override goes into `args`).
std::shared_ptr<grpc::ChannelCredentials> TlsCredentials(const TlsSettings& settings,
                                                         grpc::ChannelArguments* args);

// Both, for TCP `address`.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> TlsFromEnvironment(
    const std::string& address, grpc::ChannelArguments* args);

}  // namespace gstab
