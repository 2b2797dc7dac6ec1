// The rendezvous store multi-node jobs meet in (served to peer gstabd): waits end when the keys
// are set, when the peer gives up, and when gstabd stops.
#include "server/rendezvous_store.h"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace gstab {
namespace {

TEST(RendezvousStoreTest, AWaitEndsWhenItsKeysAreSet) {
  RendezvousStore store;
  const std::string token = store.NewToken();
  std::thread setter([&] {
    absl::SleepFor(absl::Milliseconds(50));
    EXPECT_TRUE(store.Set(token, "a", "1").ok());
    EXPECT_TRUE(store.Set(token, "b", "2").ok());
  });
  EXPECT_TRUE(store.Wait(token, {"a", "b"}, absl::Seconds(10)).ok());
  setter.join();
  EXPECT_EQ(store.Get(token, "b").value_or(""), "2");
  absl::Status missing = store.Wait(token, {"a", "c"}, absl::Milliseconds(10));
  EXPECT_EQ(missing.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(missing.message().find("'c'"), std::string::npos) << missing;
  EXPECT_EQ(store.Wait("no such token", {"a"}, absl::Milliseconds(10)).code(),
            absl::StatusCode::kPermissionDenied);
}

// A node's connection records are fetched in parts: the parts asked for, in order, each within
// its value; a part past a value's end, a key not set, or more parts than a rendezvous holds is
// refused, saying so.
TEST(RendezvousStoreTest, PartsOfSeveralValuesComeInOneGet) {
  RendezvousStore store;
  const std::string token = store.NewToken("parts", 3);
  ASSERT_TRUE(store.Set(token, "mesh/0", "aaBBcc").ok());
  ASSERT_TRUE(store.Set(token, "mesh/1", "ddEEff").ok());
  absl::StatusOr<std::vector<std::string>> parts =
      store.GetSlices(token, {{"mesh/1", 2, 2}, {"mesh/0", 2, 2}, {"mesh/0", 6, 0}});
  ASSERT_TRUE(parts.ok()) << parts.status();
  EXPECT_EQ(*parts, (std::vector<std::string>{"EE", "BB", ""}));
  absl::StatusOr<std::vector<std::string>> past = store.GetSlices(token, {{"mesh/0", 5, 2}});
  EXPECT_EQ(past.status().code(), absl::StatusCode::kOutOfRange) << past.status();
  EXPECT_NE(past.status().message().find("holds 6 bytes"), std::string::npos) << past.status();
  EXPECT_EQ(store.GetSlices(token, {{"mesh/0", ~uint64_t{0}, 2}}).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(store.GetSlices(token, {{"mesh/2", 0, 1}}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store
                .GetSlices(token, std::vector<RendezvousStore::Slice>(RendezvousStore::kMaxKeys + 1,
                                                                      {"mesh/0", 0, 1}))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.GetSlices(token, {{"mesh/0", 0, ~uint64_t{0}}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.GetSlices("no such token", {{"mesh/0", 0, 1}}).status().code(),
            absl::StatusCode::kPermissionDenied);
}

// Over the wire, a StoreGet asks for a key's value or for parts of several: one naming both is
// refused, saying so, rather than answering one and ignoring the other.
TEST(RendezvousStoreTest, AGetNamingAKeyAndPartsIsRefused) {
  RendezvousStore store;
  RendezvousService service(&store);
  const std::string token = store.NewToken("both", 2);
  ASSERT_TRUE(store.Set(token, "mesh/0", "aaBB").ok());
  v1::StoreGetRequest request;
  request.set_token(token);
  v1::StoreSlice* slice = request.add_slices();
  slice->set_key("mesh/0");
  slice->set_offset(2);
  slice->set_length(2);
  v1::StoreGetResponse parts;
  ASSERT_TRUE(service.StoreGet(nullptr, &request, &parts).ok());
  ASSERT_EQ(parts.slices_size(), 1);
  EXPECT_EQ(parts.slices(0), "BB");
  request.set_key("mesh/0");
  v1::StoreGetResponse both;
  const grpc::Status refused = service.StoreGet(nullptr, &request, &both);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.error_message().find("not both"), std::string::npos) << refused.error_message();
  EXPECT_TRUE(both.value().empty() && both.slices().empty());
}

// A holder of the token cannot fill gstabd's memory: a rendezvous holds a bounded number of keys
// and bytes, values replaced in place count once, and other rendezvous are not affected.
// A claim (if_absent) sets a key once; a later one finds the first's value.
TEST(RendezvousStoreTest, AClaimKeepsTheFirstValue) {
  RendezvousStore store;
  const std::string token = store.NewToken("claimed");
  std::string holds;
  ASSERT_TRUE(store.Set(token, "node-rank/0", "a:1", /*if_absent=*/true, &holds).ok());
  EXPECT_EQ(holds, "a:1");
  ASSERT_TRUE(store.Set(token, "node-rank/0", "b:2", /*if_absent=*/true, &holds).ok());
  EXPECT_EQ(holds, "a:1");
  EXPECT_EQ(store.Get(token, "node-rank/0").value_or(""), "a:1");
  ASSERT_TRUE(store.Set(token, "node-rank/0", "a:1", /*if_absent=*/true, &holds).ok());
  EXPECT_EQ(holds, "a:1");  // its own again: the same
}

TEST(RendezvousStoreTest, ARendezvousHoldsBoundedKeysAndBytes) {
  RendezvousStore store(1024, size_t{128} << 20);  // 128 MiB in all (gstabd's: 1 GiB)
  const std::string token = store.NewToken("big"), other = store.NewToken("other");
  const std::string mib(size_t{1} << 20, 'x');
  const int per = static_cast<int>(RendezvousStore::MaxBytes(1) >> 20);  // MiB, one node
  for (int i = 0; i < per - 1; ++i) {
    ASSERT_TRUE(store.Set(token, "k" + std::to_string(i), mib).ok());
  }
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(store.Set(token, "k0", mib).ok());  // replaced
  const std::string over = mib + std::string(1024, 'x');  // past the cap's slack of 256 bytes
  absl::Status full = store.Set(token, "one-too-many", over);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_NE(full.message().find("'one-too-many'"), std::string::npos) << full;
  EXPECT_TRUE(store.Set(token, "k1", "small").ok());  // replacing with less makes room
  EXPECT_TRUE(store.Set(token, "one-too-many", over).ok());
  EXPECT_TRUE(store.Set(other, "k0", mib).ok());
  // Nor may a wait ask for more keys than a rendezvous holds.
  const std::vector<std::string> too_many(RendezvousStore::kMaxKeys + 1, "k0");
  EXPECT_EQ(store.Wait(other, too_many, absl::Milliseconds(1)).code(),
            absl::StatusCode::kInvalidArgument);

  // Rendezvous of other jobs filled in turn: the store's total is reached within one
  // rendezvous of its cap, and a rendezvous that goes makes room.
  int filled = per, r = 0;  // MiB set so far (token's, other's)
  absl::Status total;
  for (; total.ok() && r < 1000; ++r) {
    const std::string next = store.NewToken("full" + std::to_string(r));
    for (int i = 0; i < per - 1 && total.ok(); ++i) {
      total = store.Set(next, "k" + std::to_string(i), mib);
      filled += total.ok();
    }
  }
  EXPECT_EQ(total.code(), absl::StatusCode::kResourceExhausted) << total;
  EXPECT_NE(total.message().find("128 MiB in all"), std::string::npos) << total;
  EXPECT_GE(filled, 127);
  // A job's two newest rendezvous are kept: three more of full0's, and its full one goes.
  for (int i = 0; i < 3; ++i) store.NewToken("full0");
  EXPECT_TRUE(store.Set(other, "k1", mib).ok());

  const std::string few = store.NewToken("few");
  for (size_t i = 0; i < RendezvousStore::kMaxKeys; ++i) {
    ASSERT_TRUE(store.Set(few, std::to_string(i), "").ok());
  }
  EXPECT_EQ(store.Set(few, "last", "").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(store.Set(few, "0", "again").ok());

  // A job of many nodes holds more: Gloo's records grow with the pairs of nodes.
  RendezvousStore roomy;
  const std::string wide = roomy.NewToken("wide", 512);
  for (int i = 0; i < 512; ++i) {
    ASSERT_TRUE(roomy.Set(wide, std::to_string(i), std::string(512 * 100, 'a')).ok()) << i;
  }
}

// A full store forgets the rendezvous unused the longest (those of jobs connected long ago) to
// make room for a new job's, never one used within the idle time: a node that hosted many jobs'
// stores went on refusing every new job once 1 GiB of old ones' records had gathered.
TEST(RendezvousStoreTest, AFullStoreForgetsTheLeastRecentlyUsedIdleRendezvous) {
  const std::string kib(1024, 'x');
  RendezvousStore store(1024, 4 * 1024 + 64, absl::Milliseconds(200));
  const std::string oldest = store.NewToken("oldest"), older = store.NewToken("older");
  ASSERT_TRUE(store.Set(oldest, "k", kib).ok());
  ASSERT_TRUE(store.Set(older, "k", kib).ok());
  ASSERT_TRUE(store.Set(older, "k2", kib).ok());
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_TRUE(store.Get(older, "k").ok());  // used again: now the newer of the two
  absl::SleepFor(absl::Milliseconds(300));
  const std::string fresh = store.NewToken("fresh");
  ASSERT_TRUE(store.Set(fresh, "k", kib).ok());   // fits: 4 KiB in all
  EXPECT_TRUE(store.Set(fresh, "k2", kib).ok());  // makes room: the least recently used goes
  EXPECT_EQ(store.Get(oldest, "k").status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(store.Get(older, "k").ok());

  // Too little idle to make room: refused, and nothing forgotten for it.
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(store.Set(fresh, "big", std::string(8 * 1024, 'x')).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(store.Get(older, "k").ok());

  // Nothing idle: refused, naming the caps.
  RendezvousStore busy(1024, 2 * 1024 + 64);
  const std::string a = busy.NewToken("a"), b = busy.NewToken("b");
  ASSERT_TRUE(busy.Set(a, "k", kib).ok());
  ASSERT_TRUE(busy.Set(b, "k", kib).ok());
  absl::Status full = busy.Set(b, "k2", kib);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_NE(full.message().find("used in the last 10m"), std::string::npos) << full;
  EXPECT_TRUE(busy.Get(a, "k").ok());
}

// A peer that gave up, and a stopping gstabd, end a wait long before its timeout: gstabd's peer
// server waits for its calls when it stops, and a final checkpoint comes after.
TEST(RendezvousStoreTest, AWaitEndsWhenItsPeerGivesUpOrTheStoreCloses) {
  RendezvousStore store;
  const std::string token = store.NewToken();
  std::atomic<bool> gave_up{false};
  std::thread peer([&] {
    absl::SleepFor(absl::Milliseconds(100));
    gave_up = true;
  });
  absl::Status s = store.Wait(token, {"never"}, absl::Seconds(60), [&] { return gave_up.load(); });
  peer.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;  // not the 60 s DEADLINE_EXCEEDED

  std::thread closer([&] {
    absl::SleepFor(absl::Milliseconds(100));
    store.Close();
  });
  absl::Time start = absl::Now();
  s = store.Wait(token, {"never"}, absl::Seconds(60));  // no poll: the close wakes it
  closer.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));

  // A rendezvous forgotten (pushed out by a newer one) ends its waits at once, as unknown.
  RendezvousStore small(/*max_rendezvous=*/1);
  const std::string old = small.NewToken("a");
  std::thread newer([&] {
    absl::SleepFor(absl::Milliseconds(100));
    small.NewToken("b");
  });
  start = absl::Now();
  s = small.Wait(old, {"never"}, absl::Seconds(60));
  newer.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
}

// A job making rendezvous in a loop (restarting) forgets its own older ones, never another
// job's that has yet to connect; beyond the cap the oldest of any job goes.
TEST(RendezvousStoreTest, AJobMakingManyForgetsItsOwnOldOnesFirst) {
  RendezvousStore store(/*max_rendezvous=*/8);
  const std::string quiet = store.NewToken("quiet-job");
  std::vector<std::string> looping;
  for (int i = 0; i < 100; ++i) looping.push_back(store.NewToken("looping-job"));
  EXPECT_TRUE(store.Set(quiet, "k", "v").ok());
  EXPECT_TRUE(store.Set(looping[99], "k", "v").ok());
  EXPECT_TRUE(store.Set(looping[98], "k", "v").ok());
  EXPECT_EQ(store.Set(looping[97], "k", "v").code(), absl::StatusCode::kPermissionDenied);
  for (int i = 0; i < 8; ++i) store.NewToken("job-" + std::to_string(i));
  EXPECT_EQ(store.Set(quiet, "k", "v").code(), absl::StatusCode::kPermissionDenied);
}

// A caller making rendezvous for many job names forgets its own older ones, not another
// caller's: beyond the cap, the caller holding the most gives up its oldest.
TEST(RendezvousStoreTest, ACallerMakingManyForgetsItsOwnNotAnothers) {
  RendezvousStore store(/*max_rendezvous=*/8);
  const std::string victim = store.NewToken("two-nodes", 2, "uid 1000");
  std::vector<std::string> flood;
  for (int i = 0; i < 100; ++i) {
    flood.push_back(store.NewToken("name-" + std::to_string(i), 2, "uid 65534"));
  }
  EXPECT_TRUE(store.Set(victim, "rank_0", "v").ok());
  EXPECT_TRUE(store.Set(flood[99], "k", "v").ok());
  EXPECT_EQ(store.Set(flood[0], "k", "v").code(), absl::StatusCode::kPermissionDenied);
  // Nor do another caller's rendezvous of the same job name (made before anyone holds the job).
  for (int i = 0; i < 3; ++i) store.NewToken("two-nodes", 2, "uid 65534");
  EXPECT_TRUE(store.Set(victim, "rank_1", "v").ok());
}

// At the cap, with every owner holding one, the rendezvous just made stays (whichever owner
// comes first in name order): another owner's goes.
TEST(RendezvousStoreTest, ANewRendezvousIsNeverTheOneForgotten) {
  RendezvousStore store(/*max_rendezvous=*/2);
  const std::string a = store.NewToken("a", 2, "uid 2000");
  const std::string b = store.NewToken("b", 2, "uid 3000");
  const std::string first = store.NewToken("c", 2, "uid 1000");  // sorts before the others
  EXPECT_TRUE(store.Set(first, "k", "v").ok());
  EXPECT_EQ(store.Set(a, "k", "v").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(store.Set(b, "k", "v").ok());
}

}  // namespace
}  // namespace gstab
