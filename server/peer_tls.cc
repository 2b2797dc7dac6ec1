#include "server/peer_tls.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/pem_file.h"
#include "glog/logging.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "server/tls_key_pair.h"

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
    if (!server_name.empty()) {
      return absl::InvalidArgumentError(
          "--peer_tls_name names the host in the peers' certificates, and no --peer_tls_ca, "
          "--peer_tls_cert and --peer_tls_key are given: give them, or drop the name");
    }
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
  absl::StatusOr<MutualTls> tls = LoadMutualTls({"peer_tls_ca", "peer_tls_cert", "peer_tls_key"},
                                                {ca_file, cert_file, key_file});
  if (tls.ok()) tls->server_name = server_name;
  return tls;
}

absl::StatusOr<MutualTls> ReadMutualTls(const std::array<const char*, 3>& flags,
                                        const std::array<std::string, 3>& files) {
  MutualTls tls;
  tls.files = files;
  std::string* pems[3] = {&tls.ca, &tls.cert, &tls.key};
  for (size_t i = 0; i < 3; ++i) {
    absl::StatusOr<std::string> pem = ReadPemFile(absl::StrCat("--", flags[i]), files[i]);
    if (!pem.ok()) return pem.status();
    *pems[i] = *std::move(pem);
  }
  return tls;
}

absl::StatusOr<MutualTls> LoadMutualTls(const std::array<const char*, 3>& flags,
                                        const std::array<std::string, 3>& files) {
  absl::StatusOr<MutualTls> tls = ReadMutualTls(flags, files);
  if (!tls.ok()) return tls.status();
  if (absl::Status s = CheckKeyPair(tls->cert, tls->key, absl::StrCat("--", flags[1]),
                                    absl::StrCat("--", flags[2]));
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckCertificates(tls->ca, absl::StrCat("--", flags[0])); !s.ok()) return s;
  return tls;
}

std::shared_ptr<grpc::ServerCredentials> MutualTlsServerCredentials(const MutualTls& tls) {
  if (!tls.enabled()) return grpc::InsecureServerCredentials();
  if (!tls.files[0].empty()) {
    // The credentials take a reference to the provider, which lives on with them.
    auto files = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        tls.files[2], tls.files[1], tls.files[0],
        static_cast<unsigned>(std::max<int64_t>(1, absl::ToInt64Seconds(tls.reload))));
    grpc::experimental::TlsServerCredentialsOptions options(files);
    options.watch_root_certs();
    options.watch_identity_key_cert_pairs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    return grpc::experimental::TlsServerCredentials(options);
  }
  grpc::SslServerCredentialsOptions options(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = tls.ca;
  options.pem_key_cert_pairs.push_back({tls.key, tls.cert});
  return grpc::SslServerCredentials(options);
}

MutualTls DialPems(const MutualTls& tls) {
  if (tls.files[0].empty()) return tls;
  // The last read of each set of files that agreed and paired: the start's PEMs may have
  // expired by the time a renewal is caught half written.
  static absl::Mutex last_good_mu(absl::kConstInit);
  static auto* last_good = new std::map<std::array<std::string, 3>, MutualTls>();
  absl::StatusOr<MutualTls> now;
  absl::Status why;
  for (int read = 0; read < 8; ++read) {
    if (read > 1) absl::SleepFor(absl::Milliseconds(20));  // a renewal under way may end
    // Read and checked as at start: FAILED_PRECONDITION for a key not the certificate's, or a
    // file cut short, which a renewal under way mends; anything else it does not.
    absl::StatusOr<MutualTls> again =
        LoadMutualTls({"peer_tls_ca", "peer_tls_cert", "peer_tls_key"}, tls.files);
    const bool agree = now.ok() && again.ok() && again->ca == now->ca && again->cert == now->cert &&
                       again->key == now->key;
    now = std::move(again);
    if (!now.ok()) {
      why = now.status();
      if (!absl::IsFailedPrecondition(why)) break;
      continue;
    }
    if (!agree) continue;
    MutualTls read_now = *std::move(now);
    read_now.server_name = tls.server_name;
    read_now.files = tls.files;
    read_now.reload = tls.reload;
    absl::MutexLock lock(&last_good_mu);
    (*last_good)[tls.files] = read_now;
    return read_now;
  }
  absl::MutexLock lock(&last_good_mu);
  auto good = last_good->find(tls.files);
  LOG(WARNING) << "dialling with the TLS files as gstabd "
               << (good == last_good->end() ? "read them at start" : "last read them whole") << ": "
               << (why.ok() ? absl::UnknownError("they changed at every read") : why);
  return good == last_good->end() ? tls : good->second;
}

std::shared_ptr<grpc::ChannelCredentials> MutualTlsChannelCredentials(
    const MutualTls& tls, grpc::ChannelArguments* args) {
  if (!tls.enabled()) return grpc::InsecureChannelCredentials();
  const MutualTls pems = DialPems(tls);
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = pems.ca;
  options.pem_private_key = pems.key;
  options.pem_cert_chain = pems.cert;
  if (!tls.server_name.empty()) args->SetSslTargetNameOverride(tls.server_name);
  return grpc::SslCredentials(options);
}

}  // namespace gstab
