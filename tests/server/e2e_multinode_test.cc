// Multi-node jobs on the CPU backend: N real gstabd processes on loopback, each with its own
// socket and state folder, one worker per node, Gloo over TCP between the daemons.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <thread>

#include "core/rule.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

using testing::DaemonProcess;
using testing::TempDir;
using testing::TestWorker;

constexpr char kStepTimeout[] = "--step_timeout_ms=3000";

// The options of a job's one worker on node `node` of `nodes`, with rendezvous `blob`.
AttachOptions NodeOptions(const std::string& job, uint32_t node, uint32_t nodes,
                          const std::string& blob, v1::PolicyConfig config = {}) {
  AttachOptions o = testing::JobOptions(job, std::move(config));
  o.rank = node;
  o.world_size = nodes;
  o.node_rank = node;
  o.node_count = nodes;
  o.rendezvous = blob;
  return o;
}

// One worker per daemon, attached to `job` as node i of daemons.size() with `blob`.
std::vector<std::unique_ptr<TestWorker>> AttachNodes(
    const std::vector<std::unique_ptr<DaemonProcess>>& daemons, const std::string& job,
    const std::string& blob) {
  std::vector<std::unique_ptr<TestWorker>> workers;
  const auto nodes = static_cast<uint32_t>(daemons.size());
  for (uint32_t i = 0; i < nodes; ++i) {
    auto w = TestWorker::Create(daemons[i]->socket(), NodeOptions(job, i, nodes, blob));
    EXPECT_TRUE(w.ok()) << w.status();
    workers.push_back(w.ok() ? *std::move(w) : nullptr);
  }
  return workers;
}

class Cluster {
 public:
  explicit Cluster(int nodes) {
    for (int i = 0; i < nodes; ++i) Start(i);
  }
  void Start(int node) {
    const std::string dir = root_.path() + "/node" + std::to_string(node);
    std::filesystem::create_directories(dir);
    auto d = DaemonProcess::Start(dir, {"--peer_listen=127.0.0.1:0", kStepTimeout});
    ASSERT_TRUE(d.ok()) << d.status();
    if (static_cast<int>(daemons_.size()) <= node) daemons_.resize(node + 1);
    daemons_[node] = std::make_unique<DaemonProcess>(*std::move(d));
  }
  DaemonProcess& daemon(int node) { return *daemons_[node]; }
  int size() const { return static_cast<int>(daemons_.size()); }

  // A fresh rendezvous from node 0's daemon (what global rank 0 does).
  std::string Rendezvous(const std::string& job) {
    auto client = Client::Connect(daemons_[0]->socket());
    EXPECT_TRUE(client.ok());
    absl::StatusOr<std::string> blob = (*client)->CreateRendezvous(job, size());
    EXPECT_TRUE(blob.ok()) << blob.status();
    return blob.value_or("");
  }

  std::vector<std::unique_ptr<TestWorker>> Attach(const std::string& job) {
    return Attach(job, Rendezvous(job));
  }
  std::vector<std::unique_ptr<TestWorker>> Attach(const std::string& job, const std::string& blob) {
    return AttachNodes(daemons_, job, blob);
  }

 private:
  TempDir root_;
  std::vector<std::unique_ptr<DaemonProcess>> daemons_;
};

// Every node steps at once (each blocks in the collective); step numbers may differ per node.
std::vector<absl::StatusOr<v1::StepResponse>> StepAll(
    const std::vector<std::unique_ptr<TestWorker>>& workers, std::vector<uint64_t> steps) {
  std::vector<absl::StatusOr<v1::StepResponse>> out(workers.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < workers.size(); ++i) {
    threads.emplace_back([&, i] { out[i] = workers[i]->client().Step(steps[i]); });
  }
  for (std::thread& t : threads) t.join();
  return out;
}

std::vector<uint64_t> Same(size_t n, uint64_t step) { return std::vector<uint64_t>(n, step); }

class MultiNodeTest : public ::testing::TestWithParam<int> {};

TEST_P(MultiNodeTest, ShardedStatisticsAreIdenticalOnEveryNodeAndEqualASingleNodeRun) {
  Cluster cluster(GetParam());
  auto workers = cluster.Attach("sharded");
  RuleParams params;
  std::vector<GroupStats> reference(3);
  for (uint64_t step = 1; step <= 8; ++step) {
    std::vector<double> total(3, 0.0);
    for (size_t i = 0; i < workers.size(); ++i) {
      workers[i]->Fill(step, static_cast<uint32_t>(100 + i), step == 6 ? 1e4f : 1.0f);
      const std::vector<double> sums = testing::GroupSums(*workers[i]);
      for (int g = 0; g < 3; ++g) total[g] += sums[g];
    }
    auto results = StepAll(workers, Same(workers.size(), step));
    for (size_t i = 0; i < results.size(); ++i) {
      ASSERT_TRUE(results[i].ok()) << "node " << i << ": " << results[i].status();
      EXPECT_EQ(results[i]->SerializeAsString(), results[0]->SerializeAsString())
          << "node " << i << " disagrees at step " << step;
    }
    for (int g = 0; g < 3; ++g) {
      // The single-node run over the concatenated gradients: the same rule on the total.
      const StepOutcome expected = ApplyRule(params, &reference[g], total[g], false);
      const v1::GroupResult& got = results[0]->groups(g);
      EXPECT_NEAR(got.norm() / expected.norm, 1.0, 1e-12) << "step " << step << " group " << g;
      EXPECT_NEAR(got.scale() / expected.scale, 1.0, 1e-9) << "step " << step << " group " << g;
      EXPECT_EQ(got.spike(), (expected.flags & (kFlagSpike | kFlagSpikeRatio)) != 0);
    }
  }
  std::string first;
  for (auto& w : workers) {
    absl::StatusOr<v1::GetStatsResponse> stats = w->client().GetStats();
    ASSERT_TRUE(stats.ok());
    std::string groups;
    for (const auto& g : stats->groups()) groups += g.SerializeAsString();
    if (first.empty()) first = groups;
    EXPECT_EQ(groups, first) << "statistics differ between nodes";
  }
}

INSTANTIATE_TEST_SUITE_P(Nodes, MultiNodeTest, ::testing::Values(2, 4));

// A multi-node job's configuration is node 0's: a node attached with another takes node 0's at
// the first step, an operator's change is made on node 0 and reaches every node at the same
// step, and one made on another node is refused.
TEST(MultiNodeConfigTest, EveryNodeStepsWithNodeZerosConfiguration) {
  Cluster cluster(2);
  const std::string blob = cluster.Rendezvous("configured");
  std::vector<std::unique_ptr<TestWorker>> workers;
  for (uint32_t i = 0; i < 2; ++i) {
    v1::PolicyConfig config;
    config.set_policy(i == 0 ? v1::POLICY_STABILIZE : v1::POLICY_MONITOR);
    auto w = TestWorker::Create(cluster.daemon(static_cast<int>(i)).socket(),
                                NodeOptions("configured", i, 2, blob, config));
    ASSERT_TRUE(w.ok()) << w.status();
    workers.push_back(*std::move(w));
  }
  auto step_all = [&](uint64_t step) {
    for (uint32_t i = 0; i < 2; ++i) workers[i]->Fill(step, 100 + i, step == 4 ? 1e4f : 1.0f);
    auto results = StepAll(workers, Same(2, step));
    for (auto& r : results) EXPECT_TRUE(r.ok()) << r.status();
    if (!results[0].ok() || !results[1].ok()) return std::vector<double>{};
    std::vector<double> scales;
    for (int g = 0; g < results[0]->groups_size(); ++g) {
      EXPECT_EQ(results[0]->groups(g).SerializeAsString(),
                results[1]->groups(g).SerializeAsString())
          << "the nodes stepped differently at step " << step;
      scales.push_back(results[0]->groups(g).scale());
    }
    return scales;
  };
  auto policy = [&](int node) {
    absl::StatusOr<v1::GetStatsResponse> stats = workers[node]->client().GetStats();
    EXPECT_TRUE(stats.ok());
    return stats.ok() ? stats->config().policy() : v1::POLICY_UNSPECIFIED;
  };
  for (uint64_t step = 1; step <= 4; ++step) step_all(step);
  EXPECT_EQ(policy(1), v1::POLICY_STABILIZE) << "node 1 kept its own configuration";

  v1::PolicyConfig monitor;
  monitor.set_policy(v1::POLICY_MONITOR);
  absl::Status refused = workers[1]->client().UpdateConfig(monitor).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("on node 0's gstabd"), std::string::npos) << refused;
  EXPECT_EQ(policy(1), v1::POLICY_STABILIZE);

  ASSERT_TRUE(workers[0]->client().UpdateConfig(monitor).ok());
  for (double scale : step_all(5)) EXPECT_EQ(scale, 1.0) << "monitor changes no gradient";
  EXPECT_EQ(policy(1), v1::POLICY_MONITOR);

  // A worker of node 1 that attaches again with its own configuration is not refused for it.
  v1::PolicyConfig stabilize;
  stabilize.set_policy(v1::POLICY_STABILIZE);
  auto restarted = TestWorker::Create(cluster.daemon(1).socket(),
                                      NodeOptions("configured", 1, 2, blob, stabilize));
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  workers[1] = *std::move(restarted);
  EXPECT_EQ(policy(1), v1::POLICY_MONITOR);

  // Imported statistics: on node 0 only, and every node takes them at the next step.
  std::vector<std::unique_ptr<Client>> observers;
  for (int node = 0; node < 2; ++node) {
    auto observer = Client::Connect(cluster.daemon(node).socket());
    ASSERT_TRUE(observer.ok());
    AttachOptions watch = testing::JobOptions("configured");
    watch.observer = true;
    ASSERT_TRUE((*observer)->Attach(watch).ok());
    observers.push_back(*std::move(observer));
  }
  absl::StatusOr<std::string> exported = observers[0]->ExportState();
  ASSERT_TRUE(exported.ok());
  v1::JobState state;
  ASSERT_TRUE(state.ParseFromString(*exported));
  state.mutable_groups(0)->set_spike_mean(12345);
  absl::Status on_node_1 = observers[1]->ImportState(state.SerializeAsString());
  EXPECT_EQ(on_node_1.code(), absl::StatusCode::kFailedPrecondition) << on_node_1;
  ASSERT_TRUE(observers[0]->ImportState(state.SerializeAsString()).ok());
  step_all(6);
  std::vector<std::string> groups;
  for (int node = 0; node < 2; ++node) {
    absl::StatusOr<v1::GetStatsResponse> stats = workers[node]->client().GetStats();
    ASSERT_TRUE(stats.ok());
    EXPECT_GT(stats->groups(0).norm_mean(), 1000) << "node " << node << " kept its statistics";
    groups.push_back(stats->groups(0).SerializeAsString());
  }
  EXPECT_EQ(groups[0], groups[1]) << "the nodes' statistics differ";
}

// A node that refuses a step (here: its worker truncated its shared memory) says so in the
// step's check: the other nodes leave the step at once, nothing changes anywhere, and the
// communicator goes on without a new rendezvous.
TEST(MultiNodeFaultTest, ANodesRefusalEndsTheStepEverywhereAndTheJobGoesOn) {
  Cluster cluster(2);
  const std::string blob = cluster.Rendezvous("refusing");
  auto workers = cluster.Attach("refusing", blob);
  for (size_t i = 0; i < 2; ++i) workers[i]->Fill(1, static_cast<uint32_t>(1 + i));
  for (auto& r : StepAll(workers, Same(2, 1))) ASSERT_TRUE(r.ok()) << r.status();

  const int fd = shm_open(workers[1]->arena().shm_name().c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 4096), 0);
  close(fd);
  const absl::Time start = absl::Now();
  auto refused = StepAll(workers, Same(2, 2));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2)) << "the other node waited out its timeout";
  EXPECT_EQ(refused[1].status().code(), absl::StatusCode::kFailedPrecondition)
      << refused[1].status();
  EXPECT_EQ(refused[0].status().code(), absl::StatusCode::kAborted) << refused[0].status();
  EXPECT_NE(refused[0].status().message().find("refused on another node"), std::string::npos)
      << refused[0].status();

  // Node 1's worker starts afresh (attach and register again, the same blob); no rendezvous.
  auto restarted =
      TestWorker::Create(cluster.daemon(1).socket(), NodeOptions("refusing", 1, 2, blob));
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  workers[1] = *std::move(restarted);
  for (size_t i = 0; i < 2; ++i) workers[i]->Fill(3, static_cast<uint32_t>(1 + i));
  for (auto& r : StepAll(workers, Same(2, 3))) EXPECT_TRUE(r.ok()) << r.status();
}

// A worker that attaches with an older blob than its job runs with (a restart that kept an old
// GSTAB_RENDEZVOUS) is refused, and the job's current generation goes on.
TEST(MultiNodeFaultTest, AnOlderRendezvousIsRefusedAndTheCurrentOneGoesOn) {
  Cluster cluster(2);
  const std::string old_blob = cluster.Rendezvous("stale");
  auto workers = cluster.Attach("stale");  // with a newer blob: the next generation
  for (size_t i = 0; i < 2; ++i) workers[i]->Fill(1, static_cast<uint32_t>(1 + i));
  for (auto& r : StepAll(workers, Same(2, 1))) ASSERT_TRUE(r.ok()) << r.status();

  absl::Status refused =
      TestWorker::Create(cluster.daemon(1).socket(), NodeOptions("stale", 1, 2, old_blob)).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_NE(refused.message().find("is older than the one the job runs with"), std::string::npos)
      << refused;
  for (size_t i = 0; i < 2; ++i) workers[i]->Fill(2, static_cast<uint32_t>(1 + i));
  for (auto& r : StepAll(workers, Same(2, 2))) EXPECT_TRUE(r.ok()) << r.status();
}

TEST(MultiNodeFaultTest, KilledNodeFailsTheOthersFastAndReattachRecovers) {
  Cluster cluster(3);
  auto workers = cluster.Attach("faulty");
  std::vector<std::unique_ptr<TestWorker>> solo;  // a single-node job on nodes 0 and 1
  for (int i = 0; i < 2; ++i) {
    AttachOptions o;
    o.job = "solo";
    auto w = TestWorker::Create(cluster.daemon(i).socket(), o);
    ASSERT_TRUE(w.ok());
    solo.push_back(*std::move(w));
  }
  uint64_t solo_step = 0;
  auto step_solo = [&] {
    ++solo_step;
    for (auto& w : solo) {
      w->Fill(solo_step, 7);
      absl::StatusOr<v1::StepResponse> r = w->client().Step(solo_step);
      EXPECT_TRUE(r.ok()) << "the other job noticed: " << r.status();
    }
  };
  for (uint64_t step = 1; step <= 3; ++step) {
    for (size_t i = 0; i < workers.size(); ++i)
      workers[i]->Fill(step, static_cast<uint32_t>(1 + i));
    for (auto& r : StepAll(workers, Same(3, step))) ASSERT_TRUE(r.ok()) << r.status();
    step_solo();
  }

  cluster.daemon(2).process().Signal(SIGKILL);
  ASSERT_TRUE(cluster.daemon(2).process().Wait(absl::Seconds(10)).ok());
  std::vector<std::unique_ptr<TestWorker>> survivors;
  survivors.push_back(std::move(workers[0]));
  survivors.push_back(std::move(workers[1]));
  const absl::Time start = absl::Now();
  std::thread other_job([&] { step_solo(); });
  auto failed = StepAll(survivors, Same(2, 4));
  other_job.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(20)) << "a dead node must not hang the others";
  std::cerr << "killed-node error: " << failed[0].status() << "\n";
  for (size_t i = 0; i < failed.size(); ++i) {
    const absl::StatusCode code = failed[i].status().code();
    EXPECT_TRUE(code == absl::StatusCode::kUnavailable ||
                code == absl::StatusCode::kDeadlineExceeded)
        << failed[i].status();
    EXPECT_NE(failed[i].status().message().find("node(s) 2 of 3"), std::string::npos)
        << failed[i].status();
  }
  // Without a new rendezvous the communicator stays down, and says so at once.
  survivors[0]->Fill(5, 1);
  EXPECT_EQ(survivors[0]->client().Step(5).status().code(), absl::StatusCode::kFailedPrecondition);
  step_solo();

  // Recovery: node 2 comes back, rank 0 makes a new rendezvous, every worker attaches again.
  cluster.Start(2);
  auto again = cluster.Attach("faulty");
  for (uint64_t step = 6; step <= 8; ++step) {
    for (size_t i = 0; i < again.size(); ++i) again[i]->Fill(step, static_cast<uint32_t>(1 + i));
    auto results = StepAll(again, Same(3, step));
    for (auto& r : results) {
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->SerializeAsString(), results[0]->SerializeAsString());
    }
  }
  // The restarted node took node 0's statistics: all agree.
  auto s0 = again[0]->client().GetStats();
  auto s2 = again[2]->client().GetStats();
  ASSERT_TRUE(s0.ok() && s2.ok());
  EXPECT_EQ(s0->groups(0).m(), s2->groups(0).m());
  EXPECT_EQ(s0->groups(0).accepted_steps(), s2->groups(0).accepted_steps());
  EXPECT_EQ(s0->groups(0).accepted_steps(), 6u);
  step_solo();
}

TEST(MultiNodeTest, LaunchersCanPassTheRendezvousThroughTheEnvironment) {
  Cluster cluster(2);
  auto [rc, blob] = testing::RunShell(testing::BinaryPath("tools/gstabctl") +
                                      " --socket=" + cluster.daemon(0).socket() +
                                      " rendezvous --job=env --nodes=2");
  ASSERT_EQ(rc, 0) << blob;
  blob.erase(blob.find_last_not_of('\n') + 1);
  setenv("GSTAB_RENDEZVOUS", blob.c_str(), 1);
  std::vector<std::unique_ptr<TestWorker>> workers;
  for (int i = 0; i < 2; ++i) {
    AttachOptions o;
    o.job = "env";
    o.node_rank = static_cast<uint32_t>(i);
    o.node_count = 2;  // no blob: GSTAB_RENDEZVOUS supplies it
    auto w = TestWorker::Create(cluster.daemon(i).socket(), o);
    ASSERT_TRUE(w.ok()) << w.status();
    workers.push_back(*std::move(w));
  }
  unsetenv("GSTAB_RENDEZVOUS");
  for (size_t i = 0; i < 2; ++i) workers[i]->Fill(1, static_cast<uint32_t>(1 + i));
  for (auto& r : StepAll(workers, Same(2, 1))) EXPECT_TRUE(r.ok()) << r.status();

  // A daemon without --peer_listen says how to fix it.
  TempDir dir;
  auto single = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(single.ok());
  auto client = Client::Connect(single->socket());
  absl::Status s = (*client)->CreateRendezvous("env", 2).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("--peer_listen"), std::string::npos) << s;

  // A rendezvous for GPU gradients needs the CUDA backend, and a blob whose NCCL id is not one
  // is refused before anything is joined.
  auto c0 = Client::Connect(cluster.daemon(0).socket());
  s = (*c0)->CreateRendezvous("gpu-job", 2, /*cuda=*/true).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("CUDA backend"), std::string::npos) << s;
  absl::StatusOr<std::string> good = (*c0)->CreateRendezvous("odd-id", 2);
  ASSERT_TRUE(good.ok());
  v1::RendezvousInfo info;
  ASSERT_TRUE(info.ParseFromString(*good));
  info.set_nccl_unique_id("short");
  AttachOptions o;
  o.job = "odd-id";
  o.node_count = 2;
  o.rendezvous = info.SerializeAsString();
  s = TestWorker::Create(cluster.daemon(0).socket(), o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("NCCL id has 5 bytes, not 128"), std::string::npos) << s;
}

// Two hosts made of network namespaces joined by a veth pair (needs root and iproute2; the
// test skips itself where it cannot make them).
class NamespaceHosts {
 public:
  NamespaceHosts() {
    const std::string tag = std::to_string(getpid());
    ns_ = {"gstab-a-" + tag, "gstab-b-" + tag};
    const std::string va = "gsa" + tag, vb = "gsb" + tag;
    const std::vector<std::string> setup = {
        "ip netns add " + ns_[0],
        "ip netns add " + ns_[1],
        "ip link add " + va + " type veth peer name " + vb,
        "ip link set " + va + " netns " + ns_[0],
        "ip link set " + vb + " netns " + ns_[1],
        "ip -n " + ns_[0] + " addr add " + Address(0) + "/24 dev " + va,
        "ip -n " + ns_[1] + " addr add " + Address(1) + "/24 dev " + vb,
        "ip -n " + ns_[0] + " link set " + va + " up",
        "ip -n " + ns_[1] + " link set " + vb + " up",
        "ip -n " + ns_[0] + " link set lo up",
        "ip -n " + ns_[1] + " link set lo up"};
    for (const std::string& cmd : setup) {
      auto [rc, out] = testing::RunShell(cmd);
      if (rc != 0) {
        error_ = cmd + ": " + out;
        return;
      }
    }
  }
  ~NamespaceHosts() {
    for (const std::string& ns : ns_) testing::RunShell("ip netns del " + ns);
  }
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  static std::string Address(int host) { return "10.213.0." + std::to_string(host + 1); }
  std::vector<std::string> Exec(int host) const {
    return {"/usr/sbin/ip", "netns", "exec", ns_[host]};
  }

 private:
  std::vector<std::string> ns_;
  std::string error_;
};

// A CA and one certificate it signs for "gstab-peer" (server and client use), made with
// openssl in `dir`: the flags that give a gstabd mutual TLS with its peers.
std::vector<std::string> MakePeerTls(const std::string& dir) {
  const std::string ec = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1";
  auto [rc, out] = testing::RunShell(
      "cd " + dir + " && openssl req -x509" + ec +
      " -keyout ca.key -out ca.pem -subj /CN=gstab-test-ca && openssl req" + ec +
      " -keyout peer.key -out peer.csr -subj /CN=gstab-peer && printf "
      "'subjectAltName=DNS:gstab-peer\nextendedKeyUsage=serverAuth,clientAuth\n' > ext && "
      "openssl x509 -req -in peer.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 "
      "-extfile ext -out peer.pem");
  EXPECT_EQ(rc, 0) << out;
  return {"--peer_tls_ca=" + dir + "/ca.pem", "--peer_tls_cert=" + dir + "/peer.pem",
          "--peer_tls_key=" + dir + "/peer.key", "--peer_tls_name=gstab-peer"};
}

// Across hosts the daemons' rendezvous store speaks mutual TLS (DESIGN.md 2.7).
TEST(MultiNodeHostsTest, TwoNetworkNamespacesActAsTwoHosts) {
  NamespaceHosts hosts;
  if (!hosts.ok()) GTEST_SKIP() << "cannot make network namespaces here: " << hosts.error();
  TempDir root;
  const std::vector<std::string> tls = MakePeerTls(root.path());
  std::vector<std::unique_ptr<DaemonProcess>> daemons;
  for (int i = 0; i < 2; ++i) {
    const std::string dir = root.path() + "/host" + std::to_string(i);
    std::filesystem::create_directories(dir);
    std::vector<std::string> flags = {"--peer_listen=" + NamespaceHosts::Address(i) + ":0",
                                      kStepTimeout};
    flags.insert(flags.end(), tls.begin(), tls.end());
    auto d = DaemonProcess::Start(dir, flags, hosts.Exec(i));
    ASSERT_TRUE(d.ok()) << d.status();
    daemons.push_back(std::make_unique<DaemonProcess>(*std::move(d)));
  }
  auto rank0 = Client::Connect(daemons[0]->socket());
  ASSERT_TRUE(rank0.ok());
  absl::StatusOr<std::string> blob = (*rank0)->CreateRendezvous("hosts", 2);
  ASSERT_TRUE(blob.ok()) << blob.status();
  v1::RendezvousInfo info;
  ASSERT_TRUE(info.ParseFromString(*blob));
  EXPECT_EQ(info.store_address().rfind(NamespaceHosts::Address(0) + ":", 0), 0u)
      << info.store_address();
  std::vector<std::unique_ptr<TestWorker>> workers = AttachNodes(daemons, "hosts", *blob);
  ASSERT_TRUE(workers[0] != nullptr && workers[1] != nullptr);
  for (uint64_t step = 1; step <= 5; ++step) {
    for (size_t i = 0; i < 2; ++i) workers[i]->Fill(step, static_cast<uint32_t>(1 + i));
    auto results = StepAll(workers, Same(2, step));
    for (auto& r : results) {
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->SerializeAsString(), results[0]->SerializeAsString());
    }
  }
}

// Plain TCP between daemons only on loopback; TLS flags come as a set and must be PEM files.
TEST(MultiNodePeerTlsTest, PeerPortsOffLoopbackRequireMutualTls) {
  TempDir dir;
  const std::string base = testing::GstabdPath() + " --socket=" + dir.path() + "/s.sock";
  // A name that looks like a loopback address is not one: it may resolve anywhere.
  for (const char* host : {"10.1.2.3", "127.example.com"}) {
    auto [rc, out] = testing::RunShell(base + " --peer_listen=" + host + ":0");
    EXPECT_NE(rc, 0) << host;
    EXPECT_NE(out.find("(not loopback) requires mutual TLS"), std::string::npos) << out;
  }
  auto [rc, out] = testing::RunShell(base + " --peer_listen=[::2]:0");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("(not loopback) requires mutual TLS"), std::string::npos) << out;
  std::tie(rc, out) = testing::RunShell(base + " --peer_listen=127.0.0.1:0 --peer_tls_ca=x");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("go together"), std::string::npos) << out;
  std::tie(rc, out) =
      testing::RunShell(base + " --peer_listen=127.0.0.1:0 --peer_tls_ca=" + dir.path() +
                        " --peer_tls_cert=/dev/null" + " --peer_tls_key=/dev/null");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("not a readable PEM file"), std::string::npos) << out;
}

// A daemon whose certificate the job's store does not trust cannot join: its step fails
// within the deadline instead of reading or writing the store.
TEST(MultiNodePeerTlsTest, AnUntrustedDaemonCannotJoinTheRendezvous) {
  TempDir root;
  std::filesystem::create_directories(root.path() + "/pki0");
  std::filesystem::create_directories(root.path() + "/pki1");
  const std::vector<std::vector<std::string>> tls = {MakePeerTls(root.path() + "/pki0"),
                                                     MakePeerTls(root.path() + "/pki1")};
  std::vector<std::unique_ptr<DaemonProcess>> daemons;
  for (int i = 0; i < 2; ++i) {
    const std::string dir = root.path() + "/node" + std::to_string(i);
    std::filesystem::create_directories(dir);
    std::vector<std::string> flags = {"--peer_listen=127.0.0.1:0", kStepTimeout};
    flags.insert(flags.end(), tls[i].begin(), tls[i].end());  // two different CAs
    auto d = DaemonProcess::Start(dir, flags);
    ASSERT_TRUE(d.ok()) << d.status();
    daemons.push_back(std::make_unique<DaemonProcess>(*std::move(d)));
  }
  auto rank0 = Client::Connect(daemons[0]->socket());
  absl::StatusOr<std::string> blob = (*rank0)->CreateRendezvous("pki", 2);
  ASSERT_TRUE(blob.ok()) << blob.status();
  std::vector<std::unique_ptr<TestWorker>> workers = AttachNodes(daemons, "pki", *blob);
  ASSERT_TRUE(workers[0] != nullptr && workers[1] != nullptr);
  for (size_t i = 0; i < 2; ++i) workers[i]->Fill(1, 1);
  const absl::Time start = absl::Now();
  auto results = StepAll(workers, Same(2, 1));
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
  for (auto& r : results) EXPECT_FALSE(r.ok());
  const absl::Status& untrusted = results[1].status();
  EXPECT_TRUE(untrusted.code() == absl::StatusCode::kUnavailable ||
              untrusted.code() == absl::StatusCode::kDeadlineExceeded)
      << untrusted;
  std::cout << "node 0: " << results[0].status() << "\nnode 1: " << untrusted << "\n";
}

TEST(MultiNodeFaultTest, StalledNodeFailsTheOthersWithinTheDeadline) {
  Cluster cluster(3);
  auto workers = cluster.Attach("stalled");
  for (size_t i = 0; i < 3; ++i) workers[i]->Fill(1, static_cast<uint32_t>(1 + i));
  for (auto& r : StepAll(workers, Same(3, 1))) ASSERT_TRUE(r.ok()) << r.status();

  cluster.daemon(1).process().Signal(SIGSTOP);  // alive but silent
  std::vector<std::unique_ptr<TestWorker>> others;
  others.push_back(std::move(workers[0]));
  others.push_back(std::move(workers[2]));
  const absl::Time start = absl::Now();
  auto failed = StepAll(others, Same(2, 2));
  const absl::Duration took = absl::Now() - start;
  cluster.daemon(1).process().Signal(SIGCONT);
  EXPECT_LT(took, absl::Seconds(20)) << "a stalled node must not hang the others";
  for (auto& r : failed) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
    EXPECT_NE(r.status().message().find("node(s) 1 of 3"), std::string::npos) << r.status();
  }
  std::cerr << "stalled-node error: " << failed[0].status() << "\n";
}

TEST(MultiNodeFaultTest, MismatchedStepsAndLayoutsAreRejectedNotSummed) {
  Cluster cluster(2);
  auto workers = cluster.Attach("mismatch");
  for (size_t i = 0; i < 2; ++i) workers[i]->Fill(1, static_cast<uint32_t>(1 + i));
  for (auto& r : StepAll(workers, Same(2, 1))) ASSERT_TRUE(r.ok()) << r.status();

  auto skewed = StepAll(workers, {5, 6});
  for (auto& r : skewed) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("step numbers differ"), std::string::npos) << r.status();
  }
  for (auto& r : StepAll(workers, Same(2, 7))) EXPECT_TRUE(r.ok()) << r.status();
  auto stats = workers[0]->client().GetStats();
  EXPECT_EQ(stats->groups(0).accepted_steps(), 2u);  // the rejected step changed nothing

  // Node 1 re-registers a different set of groups.
  GradientArena other;
  other.AddTensor("x", 100, DType::kFloat32, "other-group");
  ASSERT_TRUE(other.Allocate().ok());
  ASSERT_TRUE(workers[1]->client().Register(other).ok());
  auto bad = StepAll(workers, Same(2, 8));
  for (auto& r : bad) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("layouts differ"), std::string::npos) << r.status();
  }
}

}  // namespace
}  // namespace gstab
