#include "server/event_bus.h"

#include <algorithm>

namespace gstab {

void EventBus::Subscription::Push(const v1::Event& event) {
  if (!job_.empty() && event.job() != job_) return;
  absl::MutexLock lock(&mu_);
  queue_.push_back(event);
  if (queue_.size() > capacity_) {
    queue_.pop_front();
    ++dropped_;
  }
}

void EventBus::Subscription::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

EventBus::Subscription::Result EventBus::Subscription::Next(v1::Event* event,
                                                            absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closed_ || !queue_.empty(); };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  if (queue_.empty()) return closed_ ? Result::kClosed : Result::kTimeout;
  *event = std::move(queue_.front());
  queue_.pop_front();
  event->set_dropped_before(dropped_);
  dropped_ = 0;
  return Result::kEvent;
}

void EventBus::Publish(v1::Event event) {
  absl::MutexLock lock(&mu_);
  event.set_sequence(++sequence_);
  if (event.wall_time_unix_nanos() == 0) {
    event.set_wall_time_unix_nanos(absl::ToUnixNanos(absl::Now()));
  }
  for (const auto& s : subscribers_) s->Push(event);
  const bool session =
      event.type() == v1::EVENT_TYPE_ATTACH || event.type() == v1::EVENT_TYPE_DETACH;
  (session ? session_history_ : history_).Add(std::move(event));
}

std::shared_ptr<EventBus::Subscription> EventBus::Subscribe(const std::string& job, uint32_t recent,
                                                            bool live) {
  auto sub = std::shared_ptr<Subscription>(new Subscription(job, capacity_));
  absl::MutexLock lock(&mu_);
  // The newest `recent` of both histories, in the order they were published in.
  std::vector<const v1::Event*> matching;
  history_.Collect(job, &matching);
  session_history_.Collect(job, &matching);
  std::sort(matching.begin(), matching.end(),
            [](const v1::Event* a, const v1::Event* b) { return a->sequence() < b->sequence(); });
  const size_t first = matching.size() > recent ? matching.size() - recent : 0;
  for (size_t i = first; i < matching.size(); ++i) sub->Push(*matching[i]);
  if (closed_ || !live) {
    sub->Close();
  } else {
    subscribers_.push_back(sub);
  }
  return sub;
}

void EventBus::History::Add(v1::Event event) {
  std::string job = event.job();
  by_job_[std::move(job)].push_back(std::move(event));
  if (++size_ <= capacity_) return;
  // The job holding the most gives up its oldest (of equals, the one whose oldest is older).
  auto most = by_job_.begin();
  for (auto it = by_job_.begin(); it != by_job_.end(); ++it) {
    const size_t n = it->second.size(), m = most->second.size();
    if (n > m || (n == m && it->second.front().sequence() < most->second.front().sequence())) {
      most = it;
    }
  }
  most->second.pop_front();
  if (most->second.empty()) by_job_.erase(most);
  --size_;
}

void EventBus::History::Collect(const std::string& job, std::vector<const v1::Event*>* out) const {
  auto add = [out](const std::deque<v1::Event>& events) {
    for (const v1::Event& e : events) out->push_back(&e);
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
