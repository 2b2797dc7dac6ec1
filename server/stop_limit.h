// The longest a stop may take: past it, `on_expiry` runs on a thread of its own (gstabd's exits
// the process). A stop that waits on what may never end (a GPU step held in NCCL's waits until
// its step timeout, a state disk that no longer answers a sync) would otherwise run into the
// supervisor's kill (Kubernetes' grace period, systemd's stop timeout) and keep the node without
// a serving gstabd for that long.
#pragma once

#include <functional>
#include <thread>
#include <utility>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace gstab {

class StopLimit {
 public:
  StopLimit(absl::Duration limit, std::function<void()> on_expiry)
      : thread_([this, limit, on_expiry = std::move(on_expiry)] {
          if (!done_.WaitForNotificationWithTimeout(limit)) on_expiry();
        }) {}
  // The stop has ended within the limit (or its expiry has run).
  ~StopLimit() {
    done_.Notify();
    thread_.join();
  }
  StopLimit(const StopLimit&) = delete;
  StopLimit& operator=(const StopLimit&) = delete;

 private:
  absl::Notification done_;  // before thread_, which uses it
  std::thread thread_;
};

}  // namespace gstab
