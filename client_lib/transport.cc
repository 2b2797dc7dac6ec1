#include "client_lib/transport.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <sys/un.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/host_port.h"
#include "common/pem_file.h"

namespace gstab {

std::string SocketFromEnvironment() {
  const char* env = std::getenv("GSTAB_SOCKET");
  return env != nullptr && *env != '\0' ? env : kDefaultSocket;
}

bool IsTcpAddress(const std::string& address) {
  if (address.find('/') != std::string::npos) return false;  // a path
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) return false;
  return std::all_of(address.begin() + static_cast<std::ptrdiff_t>(colon) + 1, address.end(),
                     [](unsigned char c) { return std::isdigit(c) != 0; });
}

absl::Status CheckAddress(const std::string& address) {
  if (IsTcpAddress(address)) {
    if (SplitHostPort(address).has_value()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(
        "'", address,
        "' is neither HOST:PORT (a port up to 65535; an IPv6 host with or without brackets) "
        "nor a socket path (one in the current folder whose name ends in ':' and digits is "
        "./NAME)"));
  }
  // sockaddr_un's limit, which gRPC would only log about while a connection's wait ran out.
  constexpr size_t kMaxSocketPath = sizeof(sockaddr_un::sun_path) - 1;
  if (address.size() > kMaxSocketPath) {
    return absl::InvalidArgumentError(
        absl::StrCat("socket path '", address, "' is ", address.size(),
                     " bytes; a unix socket's path has at most ", kMaxSocketPath,
                     ": use a shorter one (a relative path, or a link to the folder)"));
  }
  return CheckSocketPathForGrpc(address);
}

absl::StatusOr<TlsSettings> TlsSettingsFromEnvironment(const std::string& address) {
  TlsSettings settings;
  std::string* paths[] = {&settings.ca, &settings.cert, &settings.key};
  int i = 0;
  for (const char* var : {"GSTAB_TLS_CA", "GSTAB_TLS_CERT", "GSTAB_TLS_KEY"}) {
    const char* path = std::getenv(var);
    if (path == nullptr || *path == '\0') {
      return absl::InvalidArgumentError(absl::StrCat(
          "gstabd's TCP port ", address, " takes mutual TLS, and ", var,
          " is not set: set GSTAB_TLS_CA to the PEM file of the CA that signs gstabd's "
          "certificate, and GSTAB_TLS_CERT and GSTAB_TLS_KEY to this client's certificate and "
          "key, signed by the CA gstabd's --tls_client_ca names"));
    }
    // Read now, for a clear error at once; the connections read them themselves (below).
    if (absl::StatusOr<std::string> text = ReadPemFile(var, path); !text.ok()) {
      return text.status();
    }
    *paths[i++] = path;
  }
  if (const char* v = std::getenv("GSTAB_TLS_RELOAD_S"); v != nullptr && *v != '\0') {
    if (!absl::SimpleAtoi(v, &settings.reload_s) || settings.reload_s == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("GSTAB_TLS_RELOAD_S='", v,
                       "': expected how often (seconds, 1 or more) to read the TLS "
                       "files again"));
    }
  }
  if (const char* name = std::getenv("GSTAB_TLS_NAME"); name != nullptr)
    settings.target_name = name;
  return settings;
}

std::shared_ptr<grpc::ChannelCredentials> TlsCredentials(const TlsSettings& settings,
                                                         grpc::ChannelArguments* args) {
  if (!settings.target_name.empty()) args->SetSslTargetNameOverride(settings.target_name);
  // The files as they are at each connection (every `reload_s` seconds, the last good ones
  // kept): a long-running client that connects again after its certificate or CA was renewed
  // in place shows the renewed ones.
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(
      std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
          settings.key, settings.cert, settings.ca, settings.reload_s));
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_verify_server_certs(true);
  // gstabd's certificate must name the host dialled (or GSTAB_TLS_NAME), as it must for gRPC's
  // SSL credentials: said here rather than left to gRPC's default.
  options.set_certificate_verifier(
      std::make_shared<grpc::experimental::HostNameCertificateVerifier>());
  return grpc::experimental::TlsCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> TlsFromEnvironment(
    const std::string& address, grpc::ChannelArguments* args) {
  absl::StatusOr<TlsSettings> settings = TlsSettingsFromEnvironment(address);
  if (!settings.ok()) return settings.status();
  return TlsCredentials(*settings, args);
}

}  // namespace gstab
