// Mutual TLS wherever gstabd serves TCP (docs/daemon.md, Security: TCP only with TLS): between
// the gstabd processes of multi-node jobs (the rendezvous store each job's first daemon serves,
// and the clients of it), and on --listen, whose clients show a certificate of their own.
#pragma once

#include <array>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace grpc {
class ChannelCredentials;
class ServerCredentials;
class ChannelArguments;
}  // namespace grpc

namespace gstab {

struct MutualTls {
  std::string ca;    // PEM: the CA that signs the other side's certificate
  std::string cert;  // PEM: this side's certificate chain and key
  std::string key;
  std::string server_name;  // the name in peers' certificates (empty: the host dialled)
  // The files the PEMs came from (ca, cert, key), when they did: read again while gstabd runs,
  // so that certificates renewed in place (cert-manager's Secrets) are used without a restart.
  std::array<std::string, 3> files;
  // How often a listening port looks at `files` again; each dial reads them.
  absl::Duration reload = absl::Seconds(60);
  bool enabled() const { return !cert.empty(); }
};

// Reads the PEM files (all three, or none for plain TCP) and checks that plain TCP is only
// asked for on a loopback `peer_host`. INVALID_ARGUMENT naming the flag otherwise.
absl::StatusOr<MutualTls> LoadPeerTls(const std::string& peer_host, const std::string& ca_file,
                                      const std::string& cert_file, const std::string& key_file,
                                      const std::string& server_name);

// Reads the CA, certificate and key PEM files named by flags `flags[i]` (for errors) at
// `files[i]`. INVALID_ARGUMENT naming the flag of a file that is not readable PEM.
absl::StatusOr<MutualTls> ReadMutualTls(const std::array<const char*, 3>& flags,
                                        const std::array<std::string, 3>& files);
// ReadMutualTls, then checks that the key is the certificate's (CheckKeyPair) and that the CA
// file holds a certificate (CheckCertificates): at start, and at each of DialPems' reads.
absl::StatusOr<MutualTls> LoadMutualTls(const std::array<const char*, 3>& flags,
                                        const std::array<std::string, 3>& files);

// `host`: without brackets (common/host_port.h's HostPort::host).
bool IsLoopbackHost(const std::string& host);
// Whether `host` names no host: empty, or an unspecified address (0.0.0.0, ::, and their other
// spellings, "0" and "::ffff:0.0.0.0" included).
bool IsWildcardHost(const std::string& host);

// Listening credentials: TLS requiring a client certificate signed by the CA, or plain TCP
// when `tls` is disabled. With `tls.files`, the port serves the files' certificate and trusts
// their CA as they are every `tls.reload` (a renewal that fails to read keeps the last good
// ones: gRPC logs why).
std::shared_ptr<grpc::ServerCredentials> MutualTlsServerCredentials(const MutualTls& tls);
// The matching client side; sets the target-name override in `args` when asked. With
// `tls.files`, they are read again for it (DialPems).

std::shared_ptr<grpc::ChannelCredentials> MutualTlsChannelCredentials(const MutualTls& tls,
                                                                      grpc::ChannelArguments* args);
// The PEMs a dial with `tls` shows: its files read again until two reads in a row agree and
// the key is the certificate's (a renewal written in place, certificate then key, read in
// between would pair a new certificate with the old key); else the last such read of these
// files, or `tls`'s own PEMs before any.
MutualTls DialPems(const MutualTls& tls);

}  // namespace gstab
