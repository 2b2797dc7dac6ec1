// How a failed cross-node step is named: a node's own fault as its own, and a store's refusal as
// the store's, without blaming other nodes (real Gloo, through a real store on loopback).
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/collective.h"
#include "server/cross_node.h"
#include "server/gloo_collective.h"
#include "tests/server/loopback_store.h"

namespace gstab {
namespace {

using testing::LoopbackStore;

// A node whose --peer_listen address is gone from its machine says so at once, as its own
// fault; before, it waited for the others and named them as not responding.
TEST(CrossNodeFailureTest, ANodeThatCannotListenSaysSoAtOnce) {
  LoopbackStore store;
  const v1::RendezvousInfo info = store.Rendezvous(2);
  GlooCollective node(info, 1, "192.0.2.1");  // TEST-NET-1: on no machine
  std::vector<double> values = {1.0};
  const absl::Time start = absl::Now();
  const absl::Status s = node.AllReduceSum(absl::MakeSpan(values), absl::Seconds(10));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "this node cannot listen")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "192.0.2.1")) << s;
  const absl::Status named = NameFailure(&node, "job", 1, s);
  EXPECT_EQ(named.code(), absl::StatusCode::kFailedPrecondition) << named;
  EXPECT_FALSE(absl::StrContains(named.message(), "did not respond")) << named;
}

// A collective that records whether the missing nodes were asked for.
class Asked final : public Collective {
 public:
  uint32_t rank() const override { return 1; }
  uint32_t size() const override { return 2; }
  absl::Status AllReduceSum(absl::Span<double>, absl::Duration) override { return {}; }
  absl::Status AllReduceMax(absl::Span<double>, absl::Duration) override { return {}; }
  absl::Status Broadcast(absl::Span<char>, absl::Duration) override { return {}; }
  absl::Status AllGather(absl::Span<const char>, absl::Span<char>, absl::Duration) override {
    return {};
  }
  absl::StatusOr<std::vector<uint32_t>> MissingNodes(uint64_t, absl::Duration) override {
    asked = true;
    return std::vector<uint32_t>{0};
  }
  bool asked = false;
};

// The store refusing (full, here) blames no node, and is no failure to retry with the same
// rendezvous: said as the store's answer, and no node is asked about.
TEST(CrossNodeFailureTest, AStoreThatRefusesBlamesNoNode) {
  Asked c;
  const absl::Status failure = absl::UnavailableError(
      absl::StrCat("cannot connect to the job's other nodes: ", kStoreRefused,
                   ": cannot set 'rank_1': the rendezvous store holds 1 GiB, its cap"));
  const absl::Status named = NameFailure(&c, "job", 7, failure);
  EXPECT_FALSE(c.asked);
  EXPECT_EQ(named.code(), absl::StatusCode::kFailedPrecondition) << named;
  EXPECT_TRUE(absl::StrContains(named.message(), "its cap")) << named;
  EXPECT_FALSE(absl::StrContains(named.message(), "stalled")) << named;
}

}  // namespace
}  // namespace gstab
