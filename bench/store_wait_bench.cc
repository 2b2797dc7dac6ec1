// What a multi-node job's first connection costs node 0's rendezvous store while its nodes wait
// for each other: N waiters (threads, as the store's gRPC handlers are, one per node), each
// waiting for every node's key in one rendezvous, as each node of a job does for the others'
// connection records. Each wait also checks every 100 ms whether its caller gave up (the
// handler's call cancelled), as StoreWait's do.
//
// For each N: the CPU time the process spends while all N wait and no key comes (idle: 2 s),
// then the wall time from the first key set to the last waiter's return as N keys are set one
// after another, each way in the same run: with the cancellation check (what StoreWait does)
// and without (no polling: the floor).
//
//   store_wait_bench [N...]   (default: 64 256 1024)
#include <sys/resource.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/rendezvous_store.h"

namespace gstab {
namespace {

double CpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

struct Result {
  double idle_cpu = 0;   // CPU seconds per wall second while every waiter waits and no key comes
  double settle_ms = 0;  // first key set to the last waiter's return
  bool ok = true;
};

Result Run(int nodes, bool poll_cancel) {
  RendezvousStore store;
  const std::string token = store.NewToken("bench", static_cast<uint32_t>(nodes));
  std::vector<std::string> keys;
  for (int i = 0; i < nodes; ++i) keys.push_back(absl::StrCat("mesh/", i));
  std::atomic<int> failed{0};
  std::atomic<int> waiting{0};
  const std::function<bool()> never = [] { return false; };
  std::vector<std::thread> waiters;
  for (int i = 0; i < nodes; ++i) {
    waiters.emplace_back([&] {
      ++waiting;
      if (!store.Wait(token, keys, absl::Seconds(60), poll_cancel ? never : nullptr).ok()) {
        ++failed;
      }
    });
  }
  while (waiting.load() < nodes) absl::SleepFor(absl::Milliseconds(10));
  absl::SleepFor(absl::Milliseconds(200));  // every one inside its wait
  Result r;
  const double cpu_before = CpuSeconds();
  const absl::Time idle_start = absl::Now();
  absl::SleepFor(absl::Seconds(2));
  r.idle_cpu = (CpuSeconds() - cpu_before) / absl::ToDoubleSeconds(absl::Now() - idle_start);
  const absl::Time start = absl::Now();
  for (const std::string& key : keys) {
    if (!store.Set(token, key, std::string(136, 'x')).ok()) r.ok = false;
  }
  for (std::thread& t : waiters) t.join();
  r.settle_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
  r.ok = r.ok && failed.load() == 0;
  return r;
}

}  // namespace
}  // namespace gstab

int main(int argc, char** argv) {
  std::vector<int> sizes;
  for (int i = 1; i < argc; ++i) sizes.push_back(std::atoi(argv[i]));
  if (sizes.empty()) sizes = {64, 256, 1024};
  std::printf("%-6s %-26s %-26s\n", "nodes", "with cancel check", "without (floor)");
  std::printf("%-6s %-12s %-13s %-12s %-13s\n", "", "idle CPU", "settle (ms)", "idle CPU",
              "settle (ms)");
  for (int nodes : sizes) {
    const gstab::Result polled = gstab::Run(nodes, /*poll_cancel=*/true);
    const gstab::Result floor = gstab::Run(nodes, /*poll_cancel=*/false);
    std::printf("%-6d %-12.3f %-13.1f %-12.3f %-13.1f%s\n", nodes, polled.idle_cpu,
                polled.settle_ms, floor.idle_cpu, floor.settle_ms,
                polled.ok && floor.ok ? "" : "  (a wait or set failed)");
  }
  return 0;
}
