// The node collective over real Gloo, through a real rendezvous store on loopback: its mesh of
// nodes, and how a failed step is named (a node's own fault as its own, a store's refusal as
// the store's, without blaming other nodes).
#include "server/gloo_collective.h"

#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/monotonic_clock.h"
#include "gtest/gtest.h"
#include "server/collective.h"
#include "server/cross_node.h"
#include "server/gloo_store.h"
#include "tests/server/loopback_store.h"

namespace gstab {
namespace {

using testing::LoopbackStore;

// Five nodes connect their mesh, each fetching from the others' keys only the address kept for
// it, and every pair carries the right node's values: a sum and a gather across them.
TEST(GlooCollectiveTest, TheNodesMeshCarriesEachNodesValuesToEveryOther) {
  constexpr uint32_t kNodes = 5;
  LoopbackStore store;
  const v1::RendezvousInfo info = store.Rendezvous(kNodes);
  std::vector<std::unique_ptr<GlooCollective>> nodes;
  for (uint32_t r = 0; r < kNodes; ++r) {
    nodes.push_back(std::make_unique<GlooCollective>(info, r, "127.0.0.1"));
  }
  std::vector<absl::Status> sums(kNodes), gathers(kNodes);
  std::vector<std::vector<double>> values(kNodes);
  std::vector<std::string> gathered(kNodes, std::string(kNodes, '\0'));
  std::vector<std::thread> threads;
  for (uint32_t r = 0; r < kNodes; ++r) {
    threads.emplace_back([&, r] {
      values[r] = {1.0 + r, 10.0 * r};
      sums[r] = nodes[r]->AllReduceSum(absl::MakeSpan(values[r]), absl::Seconds(20));
      const char mine = static_cast<char>('a' + r);
      gathers[r] = nodes[r]->AllGather(absl::MakeConstSpan(&mine, 1), absl::MakeSpan(gathered[r]),
                                       absl::Seconds(20));
    });
  }
  for (std::thread& t : threads) t.join();
  for (uint32_t r = 0; r < kNodes; ++r) {
    ASSERT_TRUE(sums[r].ok()) << "node " << r << ": " << sums[r];
    EXPECT_EQ(values[r], (std::vector<double>{15.0, 100.0})) << "node " << r;
    ASSERT_TRUE(gathers[r].ok()) << "node " << r << ": " << gathers[r];
    EXPECT_EQ(gathered[r], "abcde") << "node " << r;
  }
}

// A job's first step fails on the nodes that came in time when one never comes; each waits out
// its own timeout. A node that came late but came is not named as missing for reporting the
// failure after the others (it had not failed yet): only the one that never came to connect.
TEST(GlooCollectiveTest, AtTheFirstConnectOnlyTheNodeThatNeverCameIsNamed) {
  LoopbackStore store;
  const v1::RendezvousInfo info = store.Rendezvous(3);
  GlooCollective first(info, 0, "127.0.0.1");
  GlooCollective late(info, 1, "127.0.0.1");
  std::vector<double> a = {1.0}, b = {2.0};
  absl::Status late_failure;
  std::thread later([&] {
    absl::SleepFor(absl::Milliseconds(1500));
    late_failure = late.AllReduceSum(absl::MakeSpan(b), absl::Seconds(3));
  });
  const absl::Status failure = first.AllReduceSum(absl::MakeSpan(a), absl::Seconds(3));
  ASSERT_FALSE(failure.ok());
  const absl::StatusOr<std::vector<uint32_t>> missing = first.MissingNodes(1, absl::Seconds(1));
  later.join();
  EXPECT_FALSE(late_failure.ok());
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_EQ(*missing, std::vector<uint32_t>{2}) << failure;
}

// A node whose --peer_listen address is gone from its machine says so at once, as its own
// fault; before, it waited for the others and named them as not responding.
TEST(GlooCollectiveTest, ANodeThatCannotListenSaysSoAtOnce) {
  std::ifstream nonlocal("/proc/sys/net/ipv4/ip_nonlocal_bind");
  if (int allowed = 0; nonlocal >> allowed && allowed != 0) {
    GTEST_SKIP() << "this machine lets any address be bound (ip_nonlocal_bind)";
  }
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
    return missing;
  }
  bool asked = false;
  std::vector<uint32_t> missing = {0};
};

// A first connect that failed with every node in the store (each set its mesh key) blames no
// node's absence, nor a stall: the connections between the nodes failed.
TEST(GlooCollectiveTest, AConnectEveryNodeCameToSaysTheConnectionsFailed) {
  Asked c;
  c.missing.clear();
  const absl::Status named = NameFailure(
      &c, "job", 1,
      absl::DeadlineExceededError(absl::StrCat(kCannotConnect, ": Timed out connecting")));
  EXPECT_TRUE(c.asked);
  EXPECT_TRUE(absl::StrContains(named.message(), "every node came to connect")) << named;
  EXPECT_FALSE(absl::StrContains(named.message(), "stalled")) << named;
  // Past the connect, the same answer means a stall.
  const absl::Status later =
      NameFailure(&c, "job", 2, absl::DeadlineExceededError("cross-node all-gather failed: x"));
  EXPECT_TRUE(absl::StrContains(later.message(), "a node stalled")) << later;
}

// The store refusing (full, here) blames no node, and is no failure to retry with the same
// rendezvous: said as the store's answer, and no node is asked about.
TEST(GlooCollectiveTest, AStoreThatRefusesBlamesNoNode) {
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

// A wait longer than one StoreWait call may be (the store's cap is 10 minutes; here a part of
// 200 ms) waits on in parts until its deadline: a key set after the first part is found.
TEST(GrpcStoreTest, AWaitLongerThanOneCallWaitsOnInParts) {
  LoopbackStore store;
  const v1::RendezvousInfo info = store.Rendezvous(2);
  const absl::Time deadline = MonotonicNow() + absl::Seconds(10);
  GrpcStore waiter(info.store_address(), info.token(), MutualTls{}, deadline, nullptr,
                   absl::Milliseconds(200));
  std::thread later([&] {
    absl::SleepFor(absl::Milliseconds(700));
    GrpcStore(info.store_address(), info.token(), MutualTls{}, deadline, nullptr)
        .set("late", {'x'});
  });
  EXPECT_NO_THROW(waiter.wait({"late"}));
  later.join();
  // And a key never set fails at the deadline, not at the first part's end.
  GrpcStore short_deadline(info.store_address(), info.token(), MutualTls{},
                           MonotonicNow() + absl::Milliseconds(600), nullptr,
                           absl::Milliseconds(200));
  const absl::Time start = absl::Now();
  EXPECT_THROW(short_deadline.wait({"never"}), std::runtime_error);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(500));
}

}  // namespace
}  // namespace gstab
