// Mutual TLS between the gstabd processes of multi-node jobs (docs/daemon.md, Security: TCP
// only with TLS): the rendezvous store each job's first daemon serves, and the clients of it.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace grpc {
class ChannelCredentials;
class ServerCredentials;
class ChannelArguments;
}  // namespace grpc

namespace gstab {

struct PeerTls {
  std::string ca;    // PEM: the CA that signs every node's certificate
  std::string cert;  // PEM: this node's certificate chain and key
  std::string key;
  std::string server_name;  // the name in peers' certificates (empty: the host dialled)
  bool enabled() const { return !cert.empty(); }
};

// Reads the PEM files (all three, or none for plain TCP) and checks that plain TCP is only
// asked for on a loopback `peer_host`. INVALID_ARGUMENT naming the flag otherwise.
absl::StatusOr<PeerTls> LoadPeerTls(const std::string& peer_host, const std::string& ca_file,
                                    const std::string& cert_file, const std::string& key_file,
                                    const std::string& server_name);

bool IsLoopbackHost(const std::string& host);

// The store's listening credentials: TLS requiring a client certificate signed by the CA, or
// plain TCP when `tls` is disabled.
std::shared_ptr<grpc::ServerCredentials> PeerServerCredentials(const PeerTls& tls);
// The matching client side; sets the target-name override in `args` when asked.
std::shared_ptr<grpc::ChannelCredentials> PeerChannelCredentials(const PeerTls& tls,
                                                                 grpc::ChannelArguments* args);

}  // namespace gstab
