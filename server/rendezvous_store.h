// The rendezvous key-value store gstabd serves to the other daemons of a multi-node job (the
// gstab.v1.Rendezvous service on --peer_listen), and the gRPC service over it. Keys live in the
// namespace of one rendezvous token; only holders of the token (from the blob the job passed
// around) can read or write them. The oldest rendezvous are forgotten beyond a cap, and the
// least recently used ones, idle a while, when the store's bytes would pass theirs.
//
// Thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/monotonic_clock.h"
#include "gstab/v1/stabilizer.grpc.pb.h"

namespace gstab {

// How the store's refusal of a token it does not hold begins (a communicator's failure that
// carries it names no missing node: cross_node.cc).
inline constexpr char kUnknownToken[] = "unknown or expired rendezvous token";
// Its answer while its gstabd (node 0's) stops, which the other nodes read: no node is missing.
inline constexpr char kStoreStopping[] =
    "node 0's gstabd, which serves the job's rendezvous store, is stopping";

class RendezvousStore {
 public:
  static constexpr size_t kMaxTotalBytes = size_t{1} << 30;
  // A rendezvous unused that long may be forgotten to make room (a job's nodes use theirs while
  // they connect, and after only to name a missing node): a store's wait is 10 minutes at most.
  static constexpr absl::Duration kIdleEvictable = absl::Minutes(10);
  explicit RendezvousStore(size_t max_rendezvous = 1024, size_t max_total_bytes = kMaxTotalBytes,
                           absl::Duration idle_evictable = kIdleEvictable)
      : max_rendezvous_(max_rendezvous),
        max_total_bytes_(max_total_bytes),
        idle_evictable_(idle_evictable) {}

  // Creates a namespace for a rendezvous of `job` and returns its token. The two newest each
  // `owner` made of a job are kept (the one it starts and the one it may still end), so that
  // one job making many (restarting in a loop) forgets its own old ones, not other jobs', nor
  // another caller's of the same name (before the job is held nobody owns it). Beyond the cap, the
  // oldest of the `owner` (the caller that asked: a uid, or a certificate's name) holding the
  // most goes, so that one caller making many (for many job names) forgets its own.
  // `nodes`: the job's node count, which sizes what the rendezvous may hold (MaxBytes).
  std::string NewToken(const std::string& job = "", uint32_t nodes = 1,
                       const std::string& owner = "");
  // RESOURCE_EXHAUSTED past kMaxKeys keys or MaxBytes bytes of keys and values in the
  // rendezvous, or max_total_bytes in the whole store once the rendezvous unused for
  // idle_evictable are forgotten, least recently used first. `if_absent`: a key already set keeps
  // its value. `holds` (may be null): the value the key holds after the call.
  absl::Status Set(const std::string& token, const std::string& key, const std::string& value,
                   bool if_absent = false, std::string* holds = nullptr);
  // NOT_FOUND when the key is not set.
  absl::StatusOr<std::string> Get(const std::string& token, const std::string& key);
  // Parts of several keys' values, in order: NOT_FOUND when a key is not set, OUT_OF_RANGE when
  // a part passes its value's end, INVALID_ARGUMENT past kMaxKeys parts or kMaxSliceBytes in
  // all. Only the parts are copied under the store's lock, not the values.
  struct Slice {
    std::string key;
    uint64_t offset = 0;
    uint64_t length = 0;
  };
  absl::StatusOr<std::vector<std::string>> GetSlices(const std::string& token,
                                                     const std::vector<Slice>& slices);
  // Waits until every key is set; DEADLINE_EXCEEDED names the first missing one, CANCELLED
  // says `cancelled` (polled) turned true, UNAVAILABLE that the store was closed,
  // INVALID_ARGUMENT that it asks for more than kMaxKeys keys.
  absl::Status Wait(const std::string& token, const std::vector<std::string>& keys,
                    absl::Duration timeout, const std::function<bool()>& cancelled = nullptr);
  // Ends every wait, now and later (gstabd is stopping: its peer server waits for them).
  void Close();

  static constexpr size_t kMaxKeys = 65536;
  // Of one GetSlices: a node's share of a job's connection records is 136 bytes a node (about
  // 209 KB for the largest job, of --max_nodes' 1536), and every byte is copied under the store's
  // lock.
  static constexpr size_t kMaxSliceBytes = size_t{1} << 20;
  // Gloo's connection records come to 136 bytes per ordered pair of nodes (each node sets one
  // key naming its pairs' addresses): a rendezvous holds 16 MiB and 256 bytes a pair.
  static constexpr size_t MaxBytes(uint32_t nodes) {
    return (size_t{16} << 20) + size_t{256} * nodes * nodes;
  }

 private:
  struct Space {
    std::map<std::string, std::string> values;
    size_t bytes = 0;      // of the keys and values
    size_t max_bytes = 0;  // MaxBytes of its job's node count
    absl::Time used = MonotonicNow();  // its last Set, Get or Wait
  };
  // PERMISSION_DENIED for an unknown token.
  absl::StatusOr<Space*> Find(const std::string& token) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Drops the namespace of `token` (in order_ too).
  void Forget(std::string token) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets rendezvous unused for idle_evictable_ (not `keep`), least recently used first, until
  // `more` bytes fit in max_total_bytes_; whether they do.
  bool MakeRoom(const std::string& keep, size_t more) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  static constexpr size_t kPerJob = 2;
  const size_t max_rendezvous_;
  const size_t max_total_bytes_;
  const absl::Duration idle_evictable_;
  absl::Mutex mu_;
  std::map<std::string, Space> spaces_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> order_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::deque<std::string>> by_job_ ABSL_GUARDED_BY(mu_);  // newest last
  std::map<std::string, std::deque<std::string>> by_owner_ ABSL_GUARDED_BY(mu_);  // newest last
  size_t total_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // of every rendezvous' keys and values
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  // Waits under way, by the rendezvous and key each is missing: a Set wakes those missing its
  // key, and no other (a job's first connection has every node wait at once, each for every
  // node's key; a condition of absl's would be evaluated for every wait at each unlock of mu_).
  std::multimap<std::pair<std::string, std::string>, absl::CondVar*> waiting_ ABSL_GUARDED_BY(mu_);
  // Wakes the waits of `token` (every wait, for an empty one).
  void WakeWaits(const std::string& token) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
};

class RendezvousService final : public v1::Rendezvous::Service {
 public:
  explicit RendezvousService(RendezvousStore* store) : store_(store) {}
  grpc::Status StoreSet(grpc::ServerContext*, const v1::StoreSetRequest* request,
                        v1::StoreSetResponse*) override;
  grpc::Status StoreGet(grpc::ServerContext*, const v1::StoreGetRequest* request,
                        v1::StoreGetResponse* response) override;
  grpc::Status StoreWait(grpc::ServerContext*, const v1::StoreWaitRequest* request,
                         v1::StoreWaitResponse*) override;

 private:
  RendezvousStore* store_;
};

}  // namespace gstab
