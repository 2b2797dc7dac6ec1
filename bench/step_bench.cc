// gstabd's Step latency and overhead, against baselines measured in the same run:
//   1. Step round trip over the unix socket with a small buffer, beside an empty gRPC call (the
//      standard health check) on the same channel: p50 / p99.
//   2. The whole CPU step for 64 MiB of fp32 gradients, beside the bare kernels (sum of squares,
//      rule, scale) on the same data in this process with the same thread count.
//
//   step_bench [--iterations=3000] [--mib=64] [--rounds=100]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "bench/stats.h"
#include "core/rule.h"
#include "kernels/cpu_kernels.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

void Die(const absl::Status& s) {
  std::fprintf(stderr, "step_bench: %s\n", s.ToString().c_str());
  std::exit(1);
}

template <typename Fn>
std::vector<double> Time(int n, Fn fn) {
  std::vector<double> t;
  for (int i = 0; i < n; ++i) {
    const auto a = Clock::now();
    fn();
    t.push_back(Seconds(a, Clock::now()));
  }
  return t;
}

void Latency(const std::string& socket, int iterations) {
  GradientArena arena;
  arena.AddTensor("w", 1024, DType::kFloat32);
  if (absl::Status s = arena.Allocate(); !s.ok()) Die(s);
  auto client = Client::Connect(socket);
  if (!client.ok()) Die(client.status());
  AttachOptions o;
  o.job = "latency";
  if (absl::Status s = (*client)->Attach(o); !s.ok()) Die(s);
  if (absl::Status s = (*client)->Register(arena); !s.ok()) Die(s);
  float* g = static_cast<float*>(arena.data(0));
  uint64_t step = 0;
  auto one_step = [&] {
    for (int i = 0; i < 1024; ++i) g[i] = 0.01f * static_cast<float>(i % 17);
    if (!(*client)->Step(++step).ok()) Die(absl::InternalError("step failed"));
  };
  auto health = [&] {
    if (!(*client)->CheckHealth().ok()) Die(absl::InternalError("health failed"));
  };
  Time(200, one_step);
  Time(200, health);
  std::vector<double> steps, empty;
  for (int block = 0; block < 10; ++block) {  // interleaved blocks: both see the same noise
    for (double t : Time(iterations / 10, one_step)) steps.push_back(t);
    for (double t : Time(iterations / 10, health)) empty.push_back(t);
  }
  const double s50 = bench::Percentile(steps, 0.5), s99 = bench::Percentile(steps, 0.99);
  const double e50 = bench::Percentile(empty, 0.5), e99 = bench::Percentile(empty, 0.99);
  std::printf("Step round trip, 4 KiB fp32, %zu calls each (unix socket)\n", steps.size());
  std::printf("  %-26s p50 %8.1f us   p99 %8.1f us\n", "Step", s50 * 1e6, s99 * 1e6);
  std::printf("  %-26s p50 %8.1f us   p99 %8.1f us\n", "empty call (health Check)", e50 * 1e6,
              e99 * 1e6);
  std::printf("  ratio Step / empty:        p50 %8.2f      p99 %8.2f\n", s50 / e50, s99 / e99);
}

void Overhead(const std::string& socket, int mib, int rounds) {
  const int64_t numel = int64_t{mib} << 18;  // fp32 elements in `mib` MiB
  GradientArena arena;
  arena.AddTensor("w", static_cast<uint64_t>(numel), DType::kFloat32, "model");
  if (absl::Status s = arena.Allocate(); !s.ok()) Die(s);
  float* g = static_cast<float*>(arena.data(0));
  // Both sides start every timed step from these gradients, written just before (untimed), so
  // each reads and writes the same bytes from the same cache state. Steps that each scaled the
  // gradients left for the next would drive them to zero, whose scale of 1 the kernel skips.
  std::vector<float> pristine(static_cast<size_t>(numel));
  for (int64_t i = 0; i < numel; ++i) pristine[i] = 1e-3f * static_cast<float>(i % 1000);
  auto refill = [&] { std::copy(pristine.begin(), pristine.end(), g); };
  auto client = Client::Connect(socket);
  if (!client.ok()) Die(client.status());
  AttachOptions o;
  o.job = "overhead";
  if (absl::Status s = (*client)->Attach(o); !s.ok()) Die(s);
  if (absl::Status s = (*client)->Register(arena); !s.ok()) Die(s);

  // The same work in-process: kernels with the daemon's thread count, the rule, the scale the
  // rule gives (the stabilizer's: never 1 for these gradients, so both sides write them all).
  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  CpuExecutor executor(threads);
  ChunkTable table = *ChunkTable::Create({Chunk{g, numel, DType::kFloat32, 0}}, 1);
  std::vector<TilePartial> scratch(CpuSumSquaresScratchSize(table));
  RuleParams params;
  GroupStats stats;
  float bare_scale = 1.0f;
  auto bare = [&] {
    double sum;
    uint32_t bad;
    (void)CpuGroupSumSquares(table, absl::MakeSpan(scratch), absl::MakeSpan(&sum, 1),
                             absl::MakeSpan(&bad, 1), &executor);
    bare_scale = static_cast<float>(ApplyRule(params, &stats, sum, bad != 0).scale);
    (void)CpuScaleGroups(table, absl::MakeConstSpan(&bare_scale, 1), &executor);
  };
  uint64_t step = 0;
  float daemon_scale = 1.0f;
  auto daemon_step = [&] {
    absl::StatusOr<v1::StepResponse> r = (*client)->Step(++step);
    if (!r.ok()) Die(r.status());
    daemon_scale = r->groups_size() == 1 ? static_cast<float>(r->groups(0).scale()) : 1.0f;
  };
  std::vector<double> daemon_t, bare_t;
  for (int i = 0; i < 3; ++i) {
    refill();
    bare();
    refill();
    daemon_step();
  }
  for (int round = 0; round < rounds; ++round) {
    refill();
    for (double t : Time(1, bare)) bare_t.push_back(t);
    refill();
    for (double t : Time(1, daemon_step)) daemon_t.push_back(t);
  }
  if (bare_scale == 1.0f || daemon_scale == 1.0f) {
    Die(absl::InternalError("a scale of 1: the kernels skipped the write, the figures are void"));
  }
  const double d50 = bench::Percentile(daemon_t, 0.5), b50 = bench::Percentile(bare_t, 0.5);
  std::printf("Whole CPU step, %d MiB fp32, one group, %d threads, median of %zu\n", mib, threads,
              daemon_t.size());
  std::printf("  %-26s %8.2f ms  (%6.2f GB/s of gradients)\n", "gstabd Step (round trip)",
              d50 * 1e3, double(numel) * 4 / d50 / 1e9);
  std::printf("  %-26s %8.2f ms  (%6.2f GB/s)\n", "bare kernels + rule", b50 * 1e3,
              double(numel) * 4 / b50 / 1e9);
  std::printf("  daemon overhead:           %+7.1f %%\n", (d50 / b50 - 1) * 100);
}

}  // namespace
}  // namespace gstab

int main(int argc, char** argv) {
  int iterations = 3000, mib = 64, rounds = 100;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--iterations=", 0) == 0) iterations = std::atoi(a.c_str() + 13);
    if (a.rfind("--mib=", 0) == 0) mib = std::atoi(a.c_str() + 6);
    if (a.rfind("--rounds=", 0) == 0) rounds = std::max(1, std::atoi(a.c_str() + 9));
  }
  gstab::testing::TempDir dir;
  auto daemon = gstab::testing::DaemonProcess::Start(dir.path());
  if (!daemon.ok()) gstab::Die(daemon.status());
  gstab::Latency(daemon->socket(), iterations);
  gstab::Overhead(daemon->socket(), mib, rounds);
  (void)daemon->Stop();
  return 0;
}
