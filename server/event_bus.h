// The daemon's event stream: the pipeline publishes spike, skip, divergence, attach, detach and
// config-change events; each WatchEvents subscriber reads them from its own bounded queue.
// Publishing never blocks on a subscriber: a full queue (in events, or in bytes: an event may
// name many groups) drops its oldest event and the next event delivered carries how many were
// lost (Event.dropped_before). An event is stored once, however many queues and histories hold
// it (shared_ptr: its owners come and go in any order): a publish costs a pointer per
// subscriber, not a copy.
//
// Thread-safe.
#pragma once

#include <deque>
#include <list>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gstab/v1/stabilizer.pb.h"

namespace gstab {

class EventBus {
 public:
  class Subscription {
   public:
    enum class Result { kEvent, kTimeout, kClosed };
    // Waits up to `timeout` for the next event.
    Result Next(v1::Event* event, absl::Duration timeout);

   private:
    friend class EventBus;
    Subscription(std::string job, size_t capacity, size_t max_bytes)
        : job_(std::move(job)), capacity_(capacity), max_bytes_(max_bytes) {}
    using Shared = std::shared_ptr<const v1::Event>;
    // `bytes`: the event's encoded size.
    void Push(const Shared& event, size_t bytes);
    void ForgetDrops();
    void Close();

    const std::string job_;
    const size_t capacity_;
    const size_t max_bytes_;
    absl::Mutex mu_;
    std::deque<std::pair<Shared, size_t>> queue_ ABSL_GUARDED_BY(mu_);     // and its bytes
    size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;                                // queued, in all
    uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
    bool closed_ ABSL_GUARDED_BY(mu_) = false;
  };

  // `capacity`: events queued per subscriber, and `max_queue_bytes` their encoded bytes (the
  // newest is kept whatever its size). Recent events are kept for new subscribers twice
  // over: the sessions' (ATTACH, DETACH) and the others, so that sessions coming and going (an
  // operator's `gstabctl config show` in a loop, say) cannot push spikes out of the history.
  // Each keeps a job's newest `per_job` events, and `total` over every job: past that the
  // oldest go, whichever job's. A job spiking at every step thus keeps `per_job` events, and
  // cannot push out another job's newer ones.
  explicit EventBus(size_t capacity = 1024, size_t per_job = 128, size_t total = 1024,
                    size_t max_queue_bytes = kDefaultMaxQueueBytes)
      : capacity_(capacity),
        max_queue_bytes_(max_queue_bytes),
        history_(per_job, total),
        session_history_(per_job, total) {}
  // A thousand events of a few groups each; about sixty of the largest (64 groups named in 256
  // characters each).
  static constexpr size_t kDefaultMaxQueueBytes = size_t{1} << 20;

  // Numbers the events from `sequence` + 1 on (no event published yet).
  void StartSequenceAt(uint64_t sequence);
  // Stamps the sequence number and (if unset) the wall time, then delivers.
  void Publish(v1::Event event);
  // Subscribes to `job` (empty: all), first receiving up to `recent` past events (at most the
  // queue's capacity and bytes; half of them if `live`, the rest left to new events), then (if
  // `live`) each event published after. A subscription that is not live ends after the past
  // ones: its Next answers kClosed once they are read.
  std::shared_ptr<Subscription> Subscribe(const std::string& job, uint32_t recent,
                                          bool live = true);
  void Unsubscribe(const std::shared_ptr<Subscription>& subscription);
  // Ends every subscription (shutdown).
  void Close();

 private:
  using Shared = Subscription::Shared;
  // One kind of events' recent history, kept as said above.
  class History {
   public:
    History(size_t per_job, size_t total) : per_job_(per_job), total_(total) {}
    void Add(Shared event);
    // Appends the newest `recent` events of `job` (empty: of every job), in no order.
    void Collect(const std::string& job, size_t recent, std::vector<Shared>* out) const;

   private:
    // Drops the oldest event of `events`, `job`'s.
    void PopOldest(const std::string& job, std::deque<Shared>* events);

    const size_t per_job_;
    const size_t total_;
    size_t size_ = 0;
    absl::flat_hash_map<std::string, std::deque<Shared>> by_job_;  // oldest first
    std::set<std::pair<uint64_t, std::string>> oldest_;  // each job's oldest: sequence, job
  };

  const size_t capacity_;
  const size_t max_queue_bytes_;
  absl::Mutex mu_;
  uint64_t sequence_ ABSL_GUARDED_BY(mu_) = 0;
  History history_ ABSL_GUARDED_BY(mu_);          // all but the sessions'
  History session_history_ ABSL_GUARDED_BY(mu_);  // ATTACH and DETACH
  std::list<std::shared_ptr<Subscription>> subscribers_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace gstab
