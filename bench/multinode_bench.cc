// The cross-node stage's added latency: Step round trips of a job spread over N gstabd
// processes on loopback (Gloo over TCP), for N = 2, 4, 8, beside the same job on one node
// measured in the same run. Every node has one worker with 4 KiB of fp32 gradients in 3 norm
// groups; all nodes step together.
//
//   multinode_bench [--steps=300]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "bench/stats.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

using testing::DaemonProcess;

// Per-step wall times seen by node 0's worker.
std::vector<double> Run(int nodes, int steps) {
  testing::TempDir root;
  std::vector<std::unique_ptr<DaemonProcess>> daemons;
  for (int i = 0; i < nodes; ++i) {
    const std::string dir = root.path() + "/node" + std::to_string(i);
    std::filesystem::create_directories(dir);
    auto d = DaemonProcess::Start(dir, {"--peer_listen=127.0.0.1:0", "--cpu_threads=1"});
    if (!d.ok()) std::exit(1);
    daemons.push_back(std::make_unique<DaemonProcess>(*std::move(d)));
  }
  std::string blob;
  if (nodes > 1) {
    auto c = Client::Connect(daemons[0]->socket());
    blob = (*c)->CreateRendezvous("bench", static_cast<uint32_t>(nodes)).value();
  }
  std::vector<std::unique_ptr<testing::TestWorker>> workers;
  for (int i = 0; i < nodes; ++i) {
    AttachOptions o;
    o.job = "bench";
    o.node_rank = static_cast<uint32_t>(i);
    o.node_count = static_cast<uint32_t>(nodes);
    o.rendezvous = blob;
    workers.push_back(*testing::TestWorker::Create(daemons[i]->socket(), o));
    workers.back()->Fill(1, static_cast<uint32_t>(i));
  }
  std::vector<double> times;
  for (int step = 1; step <= steps + 20; ++step) {
    // The other nodes' threads first, node 0's step on this one after: its clock does not
    // count their creation.
    std::vector<std::thread> threads;
    for (int i = 1; i < nodes; ++i) {
      threads.emplace_back([&, i] {
        if (!workers[i]->client().Step(static_cast<uint64_t>(step)).ok()) std::exit(1);
      });
    }
    const absl::Time start = absl::Now();
    if (!workers[0]->client().Step(static_cast<uint64_t>(step)).ok()) std::exit(1);
    const double t0 = absl::ToDoubleSeconds(absl::Now() - start);
    for (auto& t : threads) t.join();
    if (step > 20) times.push_back(t0);  // after warm-up (connection set-up)
  }
  return times;
}

}  // namespace
}  // namespace gstab

int main(int argc, char** argv) {
  int steps = 300;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--steps=", 0) == 0) steps = std::atoi(a.c_str() + 8);
  }
  const std::vector<double> single = gstab::Run(1, steps);
  const double base = gstab::bench::Percentile(single, 0.5);
  std::printf("Step round trip of node 0, %d steps after 20 warm-up, 4 KiB fp32 per node\n", steps);
  std::printf("%6s %12s %12s %16s\n", "nodes", "p50 (us)", "p99 (us)", "added p50 (us)");
  std::printf("%6d %12.1f %12.1f %16s\n", 1, base * 1e6,
              gstab::bench::Percentile(single, 0.99) * 1e6, "(baseline)");
  for (int n : {2, 4, 8}) {
    const std::vector<double> t = gstab::Run(n, steps);
    std::printf("%6d %12.1f %12.1f %16.1f\n", n, gstab::bench::Percentile(t, 0.5) * 1e6,
                gstab::bench::Percentile(t, 0.99) * 1e6,
                (gstab::bench::Percentile(t, 0.5) - base) * 1e6);
  }
  return 0;
}
