#include "client_lib/transport.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "common/pem_file.h"

namespace gstab {

bool IsTcpAddress(const std::string& address) {
  if (address.find('/') != std::string::npos) return false;  // a path
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) return false;
  return std::all_of(address.begin() + static_cast<std::ptrdiff_t>(colon) + 1, address.end(),
                     [](unsigned char c) { return std::isdigit(c) != 0; });
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> TlsFromEnvironment(
    const std::string& address, grpc::ChannelArguments* args) {
  grpc::SslCredentialsOptions options;
  struct Pem {
    const char* var;
    std::string* out;
  };
  for (const Pem& pem : {Pem{"GSTAB_TLS_CA", &options.pem_root_certs},
                         Pem{"GSTAB_TLS_CERT", &options.pem_cert_chain},
                         Pem{"GSTAB_TLS_KEY", &options.pem_private_key}}) {
    const char* path = std::getenv(pem.var);
    if (path == nullptr || *path == '\0') {
      return absl::InvalidArgumentError(absl::StrCat(
          "gstabd's TCP port ", address, " takes mutual TLS, and ", pem.var,
          " is not set: set GSTAB_TLS_CA to the PEM file of the CA that signs gstabd's "
          "certificate, and GSTAB_TLS_CERT and GSTAB_TLS_KEY to this client's certificate and "
          "key, signed by the CA gstabd's --tls_client_ca names"));
    }
    absl::StatusOr<std::string> text = ReadPemFile(pem.var, path);
    if (!text.ok()) return text.status();
    *pem.out = *std::move(text);
  }
  if (const char* name = std::getenv("GSTAB_TLS_NAME"); name != nullptr && *name != '\0') {
    args->SetSslTargetNameOverride(name);
  }
  return grpc::SslCredentials(options);
}

}  // namespace gstab
