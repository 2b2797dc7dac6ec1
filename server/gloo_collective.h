// Collective over Gloo's TCP transport. The nodes find each other through the rendezvous store
// a job's first daemon serves over gRPC (rendezvous_store.h); the connection is made on first
// use, within that operation's deadline.
#pragma once

#include <memory>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "gstab/v1/stabilizer.pb.h"
#include "server/collective.h"
#include "server/peer_tls.h"

namespace gloo {
class Context;
}
namespace grpc {
class ClientContext;
}

namespace gstab {

// The rendezvous-store calls a gstabd's communicators have in flight: a call to another node's
// store waits up to the step timeout for nodes that may never come, and a stopping gstabd
// cancels it rather than wait. Thread-safe.
class StoreCalls {
 public:
  // Cancels every call in flight, and every later one at its start.
  void CancelAll();
  // Whether `call` may go ahead (false once cancelled); a tracked call is untracked at its end.
  bool Track(grpc::ClientContext* call);
  void Untrack(grpc::ClientContext* call);
  bool cancelled() const;

 private:
  mutable absl::Mutex mu_;
  std::set<grpc::ClientContext*> calls_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

class GlooCollective final : public Collective {
 public:
  // `bind_host`: the address this node's Gloo device listens on (reachable by the others).
  // `tls`: how to reach the rendezvous store (disabled: plain TCP). `identity` (this gstabd's
  // peer address): claims the rank in the store at the first connection, so that two gstabds
  // given the same node_rank are told so (empty: no claim). `calls` (may be null): where its
  // store calls are tracked, for a stop to cancel them.
  GlooCollective(const v1::RendezvousInfo& rendezvous, uint32_t rank, std::string bind_host,
                 MutualTls tls = {}, std::string identity = "",
                 std::shared_ptr<StoreCalls> calls = nullptr);
  ~GlooCollective() override;

  uint32_t rank() const override { return rank_; }
  uint32_t size() const override { return size_; }
  absl::Status AllReduceSum(absl::Span<double> values, absl::Duration timeout) override;
  absl::Status AllReduceMax(absl::Span<double> values, absl::Duration timeout) override;
  absl::Status Broadcast(absl::Span<char> bytes, absl::Duration timeout) override;
  absl::Status AllGather(absl::Span<const char> mine, absl::Span<char> all,
                         absl::Duration timeout) override;
  absl::StatusOr<std::vector<uint32_t>> MissingNodes(uint64_t step,
                                                     absl::Duration timeout) override;
  bool Stopping() const override { return calls_ != nullptr && calls_->cancelled(); }

 private:
  absl::Status Connect(absl::Duration timeout);
  absl::Status AllReduce(absl::Span<double> values, bool max, absl::Duration timeout);
  // Records a failure: the communicator is not used again.
  absl::Status Broken(const std::string& what, const std::exception& e);

  const v1::RendezvousInfo rendezvous_;
  const uint32_t rank_;
  const uint32_t size_;
  const std::string bind_host_;
  const MutualTls tls_;
  const std::string identity_;
  const std::shared_ptr<StoreCalls> calls_;
  std::shared_ptr<gloo::Context> context_;
  // Whether the mesh was connected (a failure after says so: MissingNodes asks the store which
  // nodes reported the step's failure, not which came to connect).
  bool connected_ = false;
  std::string broken_;  // why the communicator failed, empty while healthy
};

}  // namespace gstab
