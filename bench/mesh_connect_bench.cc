// A multi-node job's first connection: N nodes (threads of this process, each with its own Gloo
// TCP device on loopback) connect their full mesh of pairs through a real rendezvous store
// (gstab.v1.Rendezvous over gRPC, as node 0's gstabd serves it). gstab's way (ConnectMesh: each
// node fetches only the address kept for it, in one call) beside Gloo's connectFullMesh (each
// node fetches every other node's whole key), in the same run, with the bytes each fetched
// through the store.
//
//   mesh_connect_bench [N...]   (default: 4 8 16 32)
#include <gloo/rendezvous/context.h>
#include <gloo/transport/tcp/device.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "common/monotonic_clock.h"
#include "server/gloo_store.h"
#include "tests/server/loopback_store.h"

namespace gstab {
namespace {

// Counts the bytes that Gloo's own gets fetch.
class Counted final : public gloo::rendezvous::Store {
 public:
  Counted(GrpcStore* store, std::atomic<uint64_t>* bytes) : store_(store), bytes_(bytes) {}
  void set(const std::string& key, const std::vector<char>& data) override {
    store_->set(key, data);
  }
  std::vector<char> get(const std::string& key) override {
    std::vector<char> value = store_->get(key);
    *bytes_ += value.size();
    return value;
  }
  void wait(const std::vector<std::string>& keys) override { store_->wait(keys); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& t) override {
    store_->wait(keys, t);
  }

 private:
  GrpcStore* const store_;
  std::atomic<uint64_t>* const bytes_;
};

struct Result {
  double seconds = 0;
  uint64_t bytes = 0;
};

// Every node's mesh connected, one thread a node; the wall time to the last.
Result Connect(testing::LoopbackStore* store, int nodes, bool gloo_way) {
  const v1::RendezvousInfo info = store->Rendezvous(static_cast<uint32_t>(nodes));
  std::atomic<uint64_t> bytes{0};
  std::atomic<bool> failed{false};
  std::vector<std::shared_ptr<gloo::Context>> contexts(nodes);
  const absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  for (int r = 0; r < nodes; ++r) {
    threads.emplace_back([&, r] {
      try {
        GrpcStore grpc_store(info.store_address(), info.token(), MutualTls{},
                             MonotonicNow() + absl::Seconds(120), nullptr);
        gloo::transport::tcp::attr attr;
        attr.hostname = "127.0.0.1";
        std::shared_ptr<gloo::transport::Device> device = gloo::transport::tcp::CreateDevice(attr);
        const std::chrono::milliseconds timeout(60000);
        if (gloo_way) {
          auto context = std::make_shared<gloo::rendezvous::Context>(r, nodes);
          context->setTimeout(timeout);
          Counted counted(&grpc_store, &bytes);
          context->connectFullMesh(counted, device);
          contexts[r] = context;
        } else {
          contexts[r] = ConnectMesh(&grpc_store, r, nodes, device, timeout);
          // What ConnectMesh fetched: one address from each other node's key.
          bytes += static_cast<uint64_t>(nodes - 1) *
                   contexts[r]->getPair(r == 0 ? 1 : 0)->address().bytes().size();
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "node %d: %s\n", r, e.what());
        failed = true;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  if (failed) std::exit(1);
  return {absl::ToDoubleSeconds(absl::Now() - start), bytes.load()};
}

}  // namespace
}  // namespace gstab

int main(int argc, char** argv) {
  using gstab::Connect;
  std::vector<int> sizes;
  for (int i = 1; i < argc; ++i) sizes.push_back(std::atoi(argv[i]));
  if (sizes.empty()) sizes = {4, 8, 16, 32};
  gstab::testing::LoopbackStore store;
  std::printf(
      "| nodes | gstab connect (s) | Gloo connectFullMesh (s) | ratio | gstab bytes fetched "
      "| Gloo bytes fetched |\n|---|---|---|---|---|---|\n");
  for (int n : sizes) {
    if (n < 2) continue;
    // Alternated, best of three each: the machine is shared.
    gstab::Result mesh{1e9, 0}, gloo{1e9, 0};
    for (int round = 0; round < 3; ++round) {
      const gstab::Result m = Connect(&store, n, false);
      const gstab::Result g = Connect(&store, n, true);
      if (m.seconds < mesh.seconds) mesh = m;
      if (g.seconds < gloo.seconds) gloo = g;
    }
    std::printf("| %d | %.3f | %.3f | %.2f | %llu | %llu |\n", n, mesh.seconds, gloo.seconds,
                gloo.seconds / mesh.seconds, static_cast<unsigned long long>(mesh.bytes),
                static_cast<unsigned long long>(gloo.bytes));
  }
  return 0;
}
