// The host-side collective of a multi-node job: one rank per (job, node), Gloo over TCP
// (gloo_collective.h). The CPU backend reduces every step through it; the CUDA backend reduces
// on the device with NCCL (server/cuda/nccl_comm.h, stream-ordered, one rank per GPU) and uses
// this one only to agree on the group count before a generation's first step.
//
// Every operation runs against a deadline and never blocks past it; after a failure the
// communicator is unusable and the job must attach again with a new rendezvous. Not
// thread-safe: the job calls it from one step at a time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace gstab {

// How a collective's failure says that the job's rendezvous store (node 0's gstabd) could not be
// reached at all.
inline constexpr char kStoreUnreachable[] = "the job's rendezvous store cannot be reached";
// In a collective's failure when a gstabd's stop ended it: this one's, which cancelled its store
// calls (StoreCalls; Collective::Stopping), or the store's own gstabd's. No node is missing.
inline constexpr char kThisGstabdStopping[] = "this gstabd is stopping";
// How a collective's failure says that the store answered, refusing (an unknown token, a cap).
inline constexpr char kStoreRefused[] = "the job's rendezvous store refused";
// How the store says a wait ended with a key unset (its deadline came first).
inline constexpr char kStoreKeyNotSet[] = "was not set";
// How a collective's failure says it failed as the nodes connected (the generation's first
// step): MissingNodes then names the nodes that never came to connect.
inline constexpr char kCannotConnect[] = "cannot connect to the job's other nodes";

class Collective {
 public:
  virtual ~Collective() = default;
  virtual uint32_t rank() const = 0;
  virtual uint32_t size() const = 0;
  // Element-wise sum or max across the nodes, in place; every node gets the same bits.
  virtual absl::Status AllReduceSum(absl::Span<double> values, absl::Duration timeout) = 0;
  virtual absl::Status AllReduceMax(absl::Span<double> values, absl::Duration timeout) = 0;
  // Replaces `bytes` (same size on every node) with node 0's.
  virtual absl::Status Broadcast(absl::Span<char> bytes, absl::Duration timeout) = 0;
  // Every node's `mine` (same size on every node), in node order: `all` holds size() of them.
  virtual absl::Status AllGather(absl::Span<const char> mine, absl::Span<char> all,
                                 absl::Duration timeout) = 0;
  // After a failure at `step`: the nodes that did not report within `timeout` (best effort,
  // through the rendezvous store), the first kMaxMissingNamed of them at most (the others are
  // not asked about: each costs a store call past the timeout); node 0 when its store does not
  // answer. An error when the store answered with a refusal (it no longer holds the rendezvous,
  // or is full), or this gstabd's stop cancelled the calls: the reason, which blames no node.
  virtual absl::StatusOr<std::vector<uint32_t>> MissingNodes(uint64_t step,
                                                             absl::Duration timeout) = 0;
  // Whether this gstabd's stop has cancelled the collective's calls (a failure since is the
  // stop's, not another node's).
  virtual bool Stopping() const { return false; }
  static constexpr size_t kMaxMissingNamed = 16;
};

}  // namespace gstab
