#include "server/event_bus.h"

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
  std::deque<v1::Event>& history = session ? session_history_ : history_;
  history.push_back(std::move(event));
  if (history.size() > history_size_) history.pop_front();
}

std::shared_ptr<EventBus::Subscription> EventBus::Subscribe(const std::string& job, uint32_t recent,
                                                            bool live) {
  auto sub = std::shared_ptr<Subscription>(new Subscription(job, capacity_));
  absl::MutexLock lock(&mu_);
  // The newest `recent` of both histories, merged back into the order they were published in.
  std::deque<const v1::Event*> matching;
  auto other = history_.rbegin();
  auto session = session_history_.rbegin();
  while (matching.size() < recent &&
         (other != history_.rend() || session != session_history_.rend())) {
    const bool take_other = session == session_history_.rend() ||
                            (other != history_.rend() && other->sequence() > session->sequence());
    const v1::Event& e = take_other ? *other++ : *session++;
    if (job.empty() || e.job() == job) matching.push_front(&e);
  }
  for (const v1::Event* e : matching) sub->Push(*e);
  if (closed_ || !live) {
    sub->Close();
  } else {
    subscribers_.push_back(sub);
  }
  return sub;
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
