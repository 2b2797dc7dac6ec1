// A multi-node job's nodes for the e2e tests: N real gstabd processes on loopback, each with its
// own socket and state folder, one worker per node, Gloo over TCP between the daemons.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab::testing {

inline constexpr char kStepTimeout[] = "--step_timeout_ms=3000";

// The options of a job's one worker on node `node` of `nodes`, with rendezvous `blob`.
inline AttachOptions NodeOptions(const std::string& job, uint32_t node, uint32_t nodes,
                                 const std::string& blob, v1::PolicyConfig config = {}) {
  AttachOptions o = JobOptions(job, std::move(config));
  o.rank = node;
  o.world_size = nodes;
  o.node_rank = node;
  o.node_count = nodes;
  o.rendezvous = blob;
  return o;
}

// One worker per daemon, attached to `job` as node i of `nodes` (0: daemons.size(); more: the
// others never come) with `blob`.
inline std::vector<std::unique_ptr<TestWorker>> AttachNodes(
    const std::vector<std::unique_ptr<DaemonProcess>>& daemons, const std::string& job,
    const std::string& blob, uint32_t nodes = 0) {
  std::vector<std::unique_ptr<TestWorker>> workers;
  if (nodes == 0) nodes = static_cast<uint32_t>(daemons.size());
  for (uint32_t i = 0; i < daemons.size(); ++i) {
    auto w = TestWorker::Create(daemons[i]->socket(), NodeOptions(job, i, nodes, blob));
    EXPECT_TRUE(w.ok()) << w.status();
    workers.push_back(w.ok() ? *std::move(w) : nullptr);
  }
  return workers;
}

class Cluster {
 public:
  // `flags` go to every gstabd, after (and so over) the cluster's own.
  explicit Cluster(int nodes, std::vector<std::string> flags = {}) : flags_(std::move(flags)) {
    for (int i = 0; i < nodes; ++i) Start(i);
  }
  void Start(int node) {
    const std::string dir = root_.path() + "/node" + std::to_string(node);
    std::filesystem::create_directories(dir);
    std::vector<std::string> flags = {"--peer_listen=127.0.0.1:0", kStepTimeout};
    flags.insert(flags.end(), flags_.begin(), flags_.end());
    auto d = DaemonProcess::Start(dir, flags);
    ASSERT_TRUE(d.ok()) << d.status();
    if (static_cast<int>(daemons_.size()) <= node) daemons_.resize(node + 1);
    daemons_[node] = std::make_unique<DaemonProcess>(*std::move(d));
  }
  DaemonProcess& daemon(int node) { return *daemons_[node]; }
  int size() const { return static_cast<int>(daemons_.size()); }

  // A fresh rendezvous from node 0's daemon (what global rank 0 does), of `nodes` nodes (0: the
  // cluster's).
  std::string Rendezvous(const std::string& job, uint32_t nodes = 0) {
    auto client = Client::Connect(daemons_[0]->socket());
    EXPECT_TRUE(client.ok());
    absl::StatusOr<std::string> blob =
        (*client)->CreateRendezvous(job, nodes == 0 ? size() : nodes);
    EXPECT_TRUE(blob.ok()) << blob.status();
    return blob.value_or("");
  }

  std::vector<std::unique_ptr<TestWorker>> Attach(const std::string& job) {
    return Attach(job, Rendezvous(job));
  }
  std::vector<std::unique_ptr<TestWorker>> Attach(const std::string& job, const std::string& blob) {
    return AttachNodes(daemons_, job, blob);
  }
  // The cluster's nodes as the first of a job of `nodes` nodes, whose others never come.
  std::vector<std::unique_ptr<TestWorker>> AttachFirstOf(const std::string& job, uint32_t nodes) {
    return AttachNodes(daemons_, job, Rendezvous(job, nodes), nodes);
  }

 private:
  const std::vector<std::string> flags_;
  TempDir root_;
  std::vector<std::unique_ptr<DaemonProcess>> daemons_;
};

// Every node steps at once (each blocks in the collective); step numbers may differ per node.
inline std::vector<absl::StatusOr<v1::StepResponse>> StepAll(
    const std::vector<std::unique_ptr<TestWorker>>& workers, std::vector<uint64_t> steps) {
  std::vector<absl::StatusOr<v1::StepResponse>> out(workers.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < workers.size(); ++i) {
    threads.emplace_back([&, i] { out[i] = workers[i]->client().Step(steps[i]); });
  }
  for (std::thread& t : threads) t.join();
  return out;
}

inline std::vector<uint64_t> Same(size_t n, uint64_t step) {
  return std::vector<uint64_t>(n, step);
}

}  // namespace gstab::testing
