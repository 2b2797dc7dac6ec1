#include "server/peer_tls.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include "absl/strings/str_cat.h"
#include "common/pem_file.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace gstab {

bool IsLoopbackHost(const std::string& host) {
  if (host == "localhost") return true;
  // Addresses only: a name such as 127.example.com may resolve anywhere.
  in_addr v4;
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6;
  return inet_pton(AF_INET6, host.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

bool IsWildcardHost(const std::string& host) {
  if (host.empty()) return true;
  in_addr v4;  // inet_aton: also "0", "0.0" and "0x0", as the resolver reads them
  if (inet_aton(host.c_str(), &v4) == 1) return v4.s_addr == INADDR_ANY;
  in6_addr v6;
  if (inet_pton(AF_INET6, host.c_str(), &v6) != 1) return false;  // a name
  if (IN6_IS_ADDR_UNSPECIFIED(&v6)) return true;
  return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 0 && v6.s6_addr[13] == 0 &&
         v6.s6_addr[14] == 0 && v6.s6_addr[15] == 0;
}

absl::StatusOr<MutualTls> LoadPeerTls(const std::string& peer_host, const std::string& ca_file,
                                      const std::string& cert_file, const std::string& key_file,
                                      const std::string& server_name) {
  const int given = !ca_file.empty() + !cert_file.empty() + !key_file.empty();
  if (given == 0) {
    if (!peer_host.empty() && !IsLoopbackHost(peer_host)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--peer_listen on ", peer_host,
          " (not loopback) requires mutual TLS: give --peer_tls_ca, --peer_tls_cert and "
          "--peer_tls_key"));
    }
    return MutualTls{};
  }
  if (given != 3) {
    return absl::InvalidArgumentError(
        "--peer_tls_ca, --peer_tls_cert and --peer_tls_key go together: give all three");
  }
  absl::StatusOr<MutualTls> tls = ReadMutualTls({"peer_tls_ca", "peer_tls_cert", "peer_tls_key"},
                                                {ca_file, cert_file, key_file});
  if (tls.ok()) tls->server_name = server_name;
  return tls;
}

absl::StatusOr<MutualTls> ReadMutualTls(const std::array<const char*, 3>& flags,
                                        const std::array<std::string, 3>& files) {
  MutualTls tls;
  std::string* pems[3] = {&tls.ca, &tls.cert, &tls.key};
  for (size_t i = 0; i < 3; ++i) {
    absl::StatusOr<std::string> pem = ReadPemFile(absl::StrCat("--", flags[i]), files[i]);
    if (!pem.ok()) return pem.status();
    *pems[i] = *std::move(pem);
  }
  return tls;
}

std::shared_ptr<grpc::ServerCredentials> MutualTlsServerCredentials(const MutualTls& tls) {
  if (!tls.enabled()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = tls.ca;
  options.pem_key_cert_pairs.push_back({tls.key, tls.cert});
  return grpc::SslServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> MutualTlsChannelCredentials(
    const MutualTls& tls, grpc::ChannelArguments* args) {
  if (!tls.enabled()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = tls.ca;
  options.pem_private_key = tls.key;
  options.pem_cert_chain = tls.cert;
  if (!tls.server_name.empty()) args->SetSslTargetNameOverride(tls.server_name);
  return grpc::SslCredentials(options);
}

}  // namespace gstab
