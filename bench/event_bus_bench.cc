// What publishing an event costs the publisher (a step's answer, or an attach under the daemon's
// lock) with many event-stream subscribers: EventBus::Publish, which stores the event once and
// hands each subscriber a pointer to it, beside the work a publish did when each subscriber's
// queue held its own copy (the event's encoded size taken and the event copied, per subscriber),
// timed in the same run on the same event.
//
//   event_bus_bench [--subscribers=40] [--groups=64] [--events=20000]
//
// The event names `groups` groups of 256 characters (a spike naming the most an event lists).
// Subscribers read nothing, so their queues stay full and drop their oldest, as a stalled
// `gstabctl events --follow` does. Figures go to bench/RESULTS.md.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "bench/flags.h"
#include "bench/stats.h"
#include "server/event_bus.h"

namespace gstab {
namespace {

using Clock = std::chrono::steady_clock;

v1::Event SpikeEvent(int groups) {
  v1::Event event;
  event.set_type(v1::EVENT_TYPE_SPIKE);
  event.set_job("llama-70b-pretrain");
  event.set_step(123456);
  event.set_norm(4.2e3);
  event.set_z(17.5);
  for (int g = 0; g < groups; ++g) {
    std::string name = "model.layers." + std::to_string(g) + ".";
    name.resize(256, 'w');
    event.add_groups(name);
  }
  return event;
}

// Microseconds per event of `events` calls of `publish`, in rounds of 1,000.
template <typename Publish>
std::vector<double> Time(int events, const Publish& publish) {
  std::vector<double> per_event;
  for (int done = 0; done < events;) {
    const int n = std::min(1000, events - done);
    const auto start = Clock::now();
    for (int i = 0; i < n; ++i) publish();
    const std::chrono::duration<double, std::micro> took = Clock::now() - start;
    per_event.push_back(took.count() / n);
    done += n;
  }
  return per_event;
}

int Main(int argc, char** argv) {
  struct {
    int subscribers = 40, groups = 64, events = 20000;
  } o;
  bench::ParseFlags(
      argc, argv,
      {{"--subscribers=", &o.subscribers}, {"--groups=", &o.groups}, {"--events=", &o.events}});
  const v1::Event event = SpikeEvent(o.groups);
  EventBus bus;
  std::vector<std::shared_ptr<EventBus::Subscription>> subs;
  for (int s = 0; s < o.subscribers; ++s) subs.push_back(bus.Subscribe("", 0));
  const std::vector<double> shared = Time(o.events, [&] { bus.Publish(event); });

  // The copies: one queue of its own events per subscriber, as full as the bus's (1,024 events
  // and 1 MiB of them).
  const size_t held =
      std::clamp<size_t>(EventBus::kDefaultMaxQueueBytes / event.ByteSizeLong(), 1, 1024);
  std::vector<std::deque<v1::Event>> queues(o.subscribers);
  size_t bytes = 0;
  const std::vector<double> copied = Time(o.events, [&] {
    for (auto& queue : queues) {
      bytes += event.ByteSizeLong();
      if (queue.size() >= held) queue.pop_front();
      queue.push_back(event);
    }
  });
  const double s50 = bench::Percentile(shared, 0.5);
  const double c50 = bench::Percentile(copied, 0.5);
  std::printf("%d subscribers, events of %d groups (%zu bytes encoded), %d events each way\n",
              o.subscribers, o.groups, event.ByteSizeLong(), o.events);
  std::printf(
      "per event, us: Publish median %.2f (max %.2f); a copy per subscriber median %.2f "
      "(max %.2f); copies / Publish %.1fx (%zu bytes counted)\n",
      s50, bench::Percentile(shared, 1.0), c50, bench::Percentile(copied, 1.0), c50 / s50, bytes);
  bus.Close();
  return 0;
}

}  // namespace
}  // namespace gstab

int main(int argc, char** argv) { return gstab::Main(argc, argv); }
