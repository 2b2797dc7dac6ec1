// How a job's nodes reach each other: the rendezvous store that node 0's gstabd serves
// (gstab.v1.Rendezvous, rendezvous_store.h), as Gloo's store, and the full mesh of Gloo pairs
// connected through it.
#pragma once

#include <gloo/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/device.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gstab/v1/stabilizer.grpc.pb.h"
#include "server/peer_tls.h"

namespace grpc {
class ClientContext;
class Status;
}  // namespace grpc

namespace gstab {

class StoreCalls;

// gloo::rendezvous::Store over the gstab.v1.Rendezvous service. Gloo reports failures by
// exception, so errors are thrown as std::runtime_error (kStoreUnreachable, kStoreRefused and
// kThisGstabdStopping say which, for NameFailure). Every call ends by `deadline` (the caller's,
// not Gloo's 30 s a call), a MonotonicNow time: the wall clock's steps move it not.
class GrpcStore final : public gloo::rendezvous::Store {
 public:
  // `calls` (may be null): where the calls are tracked, for a stop to cancel them.
  // `wait_part`: the longest one StoreWait call waits (the store answers within 10 minutes,
  // and a rendezvous untouched for 10 may be evicted): a longer wait is made of several.
  GrpcStore(const std::string& address, std::string token, const MutualTls& tls,
            absl::Time deadline, StoreCalls* calls, absl::Duration wait_part = kWaitPart);

  static constexpr absl::Duration kWaitPart = absl::Minutes(5);

  // Sets `key` to `value` unless it is set; returns what it holds then.
  std::string Claim(const std::string& key, const std::string& value);
  // The `length` bytes at `offset` of each key's value, in one call (each key waited for).
  std::vector<std::string> GetSlices(const std::vector<std::string>& keys,
                                     const std::vector<uint64_t>& offsets, uint64_t length);

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  // Gloo's own timeout is not ours (it passes its pairs', a fifth of the step's; see
  // GlooCollective::Connect): a wait takes what is left to the deadline.
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds&) override;

 private:
  // The time left to the deadline; past it, a millisecond: a key set by then is still found.
  std::chrono::milliseconds Left() const;
  // One call within `timeout`, tracked in calls_ for a stop to cancel; one the stop cancelled
  // says kThisGstabdStopping.
  template <typename Call>
  grpc::Status Run(std::chrono::milliseconds timeout, const Call& call);
  static void Check(const grpc::Status& s, const char* op, const std::string& key);

  std::unique_ptr<v1::Rendezvous::Stub> stub_;
  const std::string token_;
  const absl::Time deadline_;
  StoreCalls* const calls_;
  const std::chrono::milliseconds wait_part_;
};

// A Gloo context of `size` nodes, this one `rank`, its pairs connected through `store`, each
// pair waiting `timeout` for its peer. Each node sets one key ("mesh/RANK") holding its pairs'
// addresses, and fetches from every other node's only the address kept for it, in one call:
// what a job's first connection moves through node 0's store grows with the square of its
// nodes, where Gloo's own connectFullMesh fetches every node's whole key (the cube: about
// 146 GB for 1,024 nodes). Throws std::runtime_error (GrpcStore's, or Gloo's; one saying
// kMeshNotMade when this node could not make its side of the pairs, before it set its key).
inline constexpr char kMeshNotMade[] = "this node's connections could not be made";
// The store keys ConnectMesh sets, one a node as it comes: kMeshKeyPrefix and its rank.
inline constexpr char kMeshKeyPrefix[] = "mesh/";
std::shared_ptr<gloo::Context> ConnectMesh(GrpcStore* store, int rank, int size,
                                           const std::shared_ptr<gloo::transport::Device>& device,
                                           std::chrono::milliseconds timeout);

}  // namespace gstab
