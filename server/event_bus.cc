#include "server/event_bus.h"

#include <algorithm>
#include <utility>

namespace gstab {

void EventBus::Subscription::Push(const Shared& event, size_t bytes) {
  if (!job_.empty() && event->job() != job_) return;
  absl::MutexLock lock(&mu_);
  queue_.emplace_back(event, bytes);
  bytes_ += bytes;
  while (queue_.size() > capacity_ || (bytes_ > max_bytes_ && queue_.size() > 1)) {
    bytes_ -= queue_.front().second;
    queue_.pop_front();
    ++dropped_;
  }
}

void EventBus::Subscription::ForgetDrops() {
  absl::MutexLock lock(&mu_);
  dropped_ = 0;
}

void EventBus::Subscription::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

EventBus::Subscription::Result EventBus::Subscription::Next(v1::Event* event,
                                                            absl::Duration timeout) {
  Shared next;
  uint64_t dropped;
  {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closed_ || !queue_.empty(); };
    mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
    if (queue_.empty()) return closed_ ? Result::kClosed : Result::kTimeout;
    next = std::move(queue_.front().first);
    bytes_ -= queue_.front().second;
    queue_.pop_front();
    dropped = std::exchange(dropped_, 0);
  }
  *event = *next;  // copied outside the queue's lock, which publishes take
  event->set_dropped_before(dropped);
  return Result::kEvent;
}

void EventBus::StartSequenceAt(uint64_t sequence) {
  absl::MutexLock lock(&mu_);
  sequence_ = sequence;
}

void EventBus::Publish(v1::Event event) {
  const bool session =
      event.type() == v1::EVENT_TYPE_ATTACH || event.type() == v1::EVENT_TYPE_DETACH;
  auto shared = std::make_shared<v1::Event>(std::move(event));
  absl::MutexLock lock(&mu_);
  shared->set_sequence(++sequence_);
  if (shared->wall_time_unix_nanos() == 0) {
    shared->set_wall_time_unix_nanos(absl::ToUnixNanos(absl::Now()));
  }
  const size_t bytes = shared->ByteSizeLong();
  for (const auto& s : subscribers_) s->Push(shared, bytes);
  (session ? session_history_ : history_).Add(std::move(shared));
}

std::shared_ptr<EventBus::Subscription> EventBus::Subscribe(const std::string& job, uint32_t recent,
                                                            bool live) {
  auto sub = std::shared_ptr<Subscription>(new Subscription(job, capacity_, max_queue_bytes_));
  // No more than its queue holds: the rest would read as events this reader was too slow for.
  // A live one's past events take half of it at most, the other half left to the events
  // published before it has read them (the first would otherwise push one out, and the reader
  // be told it was too slow before it could read anything).
  const size_t room = live ? std::max<size_t>(capacity_ / 2, 1) : capacity_;
  const size_t byte_room = live ? max_queue_bytes_ / 2 : max_queue_bytes_;
  recent = static_cast<uint32_t>(std::min<size_t>(recent, room));
  absl::MutexLock lock(&mu_);
  // The newest `recent` of both histories, in the order they were published in.
  std::vector<Shared> matching;
  history_.Collect(job, recent, &matching);
  session_history_.Collect(job, recent, &matching);
  auto by_sequence = [](const Shared& a, const Shared& b) { return a->sequence() < b->sequence(); };
  const size_t first = matching.size() > recent ? matching.size() - recent : 0;
  std::nth_element(matching.begin(), matching.begin() + first, matching.end(), by_sequence);
  std::sort(matching.begin() + first, matching.end(), by_sequence);
  // Past events its byte budget cannot hold are history it asked for, not events it was too
  // slow for: the newest that fit are queued (the newest one at least), under the lock every
  // Publish, thus every step's answer, waits for; the older are not, and no loss is reported.
  size_t oldest = matching.size(), bytes = 0;
  std::vector<size_t> sizes(matching.size());
  while (oldest > first) {
    sizes[oldest - 1] = matching[oldest - 1]->ByteSizeLong();
    bytes += sizes[oldest - 1];
    if (bytes > byte_room && oldest < matching.size()) break;
    --oldest;
  }
  for (size_t i = oldest; i < matching.size(); ++i) sub->Push(matching[i], sizes[i]);
  sub->ForgetDrops();  // (none: the budget above is the queue's)
  if (closed_ || !live) {
    sub->Close();
  } else {
    subscribers_.push_back(sub);
  }
  return sub;
}

void EventBus::History::Add(Shared event) {
  const uint64_t sequence = event->sequence();
  auto [it, made] = by_job_.try_emplace(event->job());
  std::deque<Shared>& events = it->second;
  if (events.empty()) oldest_.emplace(sequence, it->first);
  events.push_back(std::move(event));
  ++size_;
  if (events.size() > per_job_) PopOldest(it->first, &events);
  if (size_ > total_) {  // the oldest of all, whichever job's
    const std::string job = oldest_.begin()->second;
    PopOldest(job, &by_job_.at(job));
  }
}

void EventBus::History::PopOldest(const std::string& job, std::deque<Shared>* events) {
  oldest_.erase({events->front()->sequence(), job});
  events->pop_front();
  --size_;
  if (events->empty()) {
    by_job_.erase(job);  // `job` may be the map's key: not used after this
    return;
  }
  oldest_.emplace(events->front()->sequence(), job);
}

void EventBus::History::Collect(const std::string& job, size_t recent,
                                std::vector<Shared>* out) const {
  auto add = [out, recent](const std::deque<Shared>& events) {
    const size_t first = events.size() > recent ? events.size() - recent : 0;
    for (size_t i = first; i < events.size(); ++i) out->push_back(events[i]);
  };
  if (!job.empty()) {
    if (auto it = by_job_.find(job); it != by_job_.end()) add(it->second);
    return;
  }
  for (const auto& [name, events] : by_job_) add(events);
}

void EventBus::Unsubscribe(const std::shared_ptr<Subscription>& subscription) {
  absl::MutexLock lock(&mu_);
  subscribers_.remove(subscription);
}

void EventBus::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
  for (const auto& s : subscribers_) s->Close();
  subscribers_.clear();
}

}  // namespace gstab
