// The CUDA kernels against the CPU kernels on the same gradients. Needs a GPU: skipped, not
// failed, where none exists (ctest label `gpu`).
#include "kernels/cuda/cuda_kernels.h"

#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "core/rule.h"
#include "gtest/gtest.h"
#include "kernels/cpu_kernels.h"
#include "kernels/cross_node_mode.h"
#include "kernels/half.h"
#include "tests/testing/gpu.h"

namespace gstab {
namespace {

bool HaveGpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define SKIP_WITHOUT_GPU() GSTAB_SKIP_WITHOUT_GPU(HaveGpu())

::testing::Environment* const kGpuOnly =
    ::testing::AddGlobalTestEnvironment(new testing::GpuOnlyBinary(&HaveGpu));

struct Layout {
  std::vector<int64_t> numel;
  std::vector<DType> dtype;
  std::vector<uint32_t> group;
  std::vector<int64_t> offset_elements;  // misalignment per chunk
};

// The same gradients on the host and the device.
class Gradients {
 public:
  Gradients(const Layout& l, uint32_t seed) : l_(l) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, 1.0f);
    for (size_t c = 0; c < l.numel.size(); ++c) {
      const size_t es = ElementSize(l.dtype[c]);
      bytes_.resize((bytes_.size() + es - 1) / es * es);  // misaligned by whole elements only
      offsets_.push_back(bytes_.size() + l.offset_elements[c] * es);
      bytes_.resize(bytes_.size() + (l.numel[c] + l.offset_elements[c]) * es + 64);
      for (int64_t i = 0; i < l.numel[c]; ++i) Set(c, i, d(rng));
    }
    EXPECT_EQ(cudaMalloc(&d_, bytes_.size()), cudaSuccess);
    Upload();
  }
  ~Gradients() { cudaFree(d_); }
  void Set(size_t c, int64_t i, float v) {
    unsigned char* p = bytes_.data() + offsets_[c] + i * ElementSize(l_.dtype[c]);
    if (l_.dtype[c] == DType::kFloat32) {
      std::memcpy(p, &v, 4);
    } else {
      const uint16_t h = l_.dtype[c] == DType::kBFloat16 ? FloatToBFloat16(v) : FloatToFloat16(v);
      std::memcpy(p, &h, 2);
    }
  }
  void Upload() { cudaMemcpy(d_, bytes_.data(), bytes_.size(), cudaMemcpyHostToDevice); }
  std::vector<unsigned char> Download() const {
    std::vector<unsigned char> out(bytes_.size());
    cudaMemcpy(out.data(), d_, out.size(), cudaMemcpyDeviceToHost);
    return out;
  }
  ChunkTable Table(bool device) {
    std::vector<Chunk> chunks;
    unsigned char* base = device ? static_cast<unsigned char*>(d_) : bytes_.data();
    uint32_t groups = 0;
    for (size_t c = 0; c < l_.numel.size(); ++c) {
      chunks.push_back(Chunk{base + offsets_[c], l_.numel[c], l_.dtype[c], l_.group[c]});
      groups = std::max(groups, l_.group[c] + 1);
    }
    return *ChunkTable::Create(chunks, groups);
  }
  std::vector<unsigned char>& host() { return bytes_; }
  void* device() { return d_; }

 private:
  Layout l_;
  std::vector<unsigned char> bytes_;
  std::vector<size_t> offsets_;
  void* d_ = nullptr;
};

struct Sums {
  std::vector<double> sums;
  std::vector<uint32_t> flags;
};

constexpr int kLoadSettings[] = {1, 2, 4, 8};

Sums GpuSums(Gradients& g, int loads_in_flight = kDefaultLoadsInFlight) {
  ChunkTable table = g.Table(true);
  auto dt = DeviceChunkTable::Upload(table, nullptr);
  EXPECT_TRUE(dt.ok()) << dt.status();
  TilePartial* d_partials;
  double* d_sums;
  uint32_t* d_flags;
  cudaMalloc(&d_partials, std::max<size_t>(1, table.tiles().size()) * sizeof(TilePartial));
  cudaMalloc(&d_sums, table.num_groups() * sizeof(double));
  cudaMalloc(&d_flags, table.num_groups() * sizeof(uint32_t));
  EXPECT_TRUE(
      LaunchGroupSumSquares(*dt, d_partials, d_sums, d_flags, nullptr, nullptr, loads_in_flight)
          .ok());
  Sums s{std::vector<double>(table.num_groups()), std::vector<uint32_t>(table.num_groups())};
  cudaMemcpy(s.sums.data(), d_sums, s.sums.size() * sizeof(double), cudaMemcpyDeviceToHost);
  cudaMemcpy(s.flags.data(), d_flags, s.flags.size() * sizeof(uint32_t), cudaMemcpyDeviceToHost);
  cudaFree(d_partials);
  cudaFree(d_sums);
  cudaFree(d_flags);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return s;
}

Sums CpuSums(Gradients& g) {
  ChunkTable table = g.Table(false);
  std::vector<TilePartial> scratch(CpuSumSquaresScratchSize(table));
  Sums s{std::vector<double>(table.num_groups()), std::vector<uint32_t>(table.num_groups())};
  EXPECT_TRUE(CpuGroupSumSquares(table, absl::MakeSpan(scratch), absl::MakeSpan(s.sums),
                                 absl::MakeSpan(s.flags), nullptr)
                  .ok());
  return s;
}

Layout MixedLayout() {
  Layout l;
  std::mt19937 rng(3);
  std::uniform_int_distribution<int64_t> size(1, 5000);
  const DType dtypes[] = {DType::kFloat32, DType::kBFloat16, DType::kFloat16};
  for (int i = 0; i < 200; ++i) {
    l.numel.push_back(i == 100 ? 1000003 : (i % 17 == 0 ? 7 : size(rng)));
    l.dtype.push_back(dtypes[i % 3]);
    l.group.push_back(static_cast<uint32_t>(i % 5));
    l.offset_elements.push_back(i % 4);
  }
  return l;
}

TEST(CudaKernelsTest, SumsMatchTheCpuKernelsAndAreBitIdenticalRunToRun) {
  SKIP_WITHOUT_GPU();
  Gradients g(MixedLayout(), 1);
  const Sums cpu = CpuSums(g);
  const Sums gpu = GpuSums(g);
  for (size_t k = 0; k < cpu.sums.size(); ++k) {
    EXPECT_NEAR(gpu.sums[k] / cpu.sums[k], 1.0, 1e-5) << "group " << k;
    EXPECT_EQ(gpu.flags[k], 0u);
  }
  // The same bits on every run, and for every number of loads in flight.
  for (int loads : kLoadSettings) {
    const Sums again = GpuSums(g, loads);
    for (size_t k = 0; k < cpu.sums.size(); ++k) {
      EXPECT_EQ(std::memcmp(&gpu.sums[k], &again.sums[k], sizeof(double)), 0)
          << "group " << k << ", " << loads << " loads in flight";
    }
  }
}

TEST(CudaKernelsTest, AnUnbuiltLoadsSettingIsRefused) {
  SKIP_WITHOUT_GPU();
  Gradients g(MixedLayout(), 1);
  ChunkTable table = g.Table(true);
  auto dt = DeviceChunkTable::Upload(table, nullptr);
  ASSERT_TRUE(dt.ok());
  const absl::Status s = LaunchScaleGroups(*dt, nullptr, nullptr, 3);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("1, 2, 4 or 8"), std::string::npos) << s;
  EXPECT_EQ(LaunchGroupSumSquares(*dt, nullptr, nullptr, nullptr, nullptr, nullptr, 16).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CudaKernelsTest, NonFiniteElementsAreFlaggedInTheirGroup) {
  SKIP_WITHOUT_GPU();
  const Layout l = MixedLayout();
  for (float bad : {NAN, INFINITY}) {
    Gradients g(l, 2);
    g.Set(100, 999999, bad);  // the big chunk, group 0
    g.Set(7, 0, bad);         // group 2
    g.Upload();
    const Sums gpu = GpuSums(g);
    EXPECT_EQ(gpu.flags, (std::vector<uint32_t>{1, 0, 1, 0, 0}));
  }
}

// Finite elements beyond about 1e18 overflow a thread's fp32 sum: it is summed again in fp64, so
// the sum stays finite (no non-finite step), near the CPU kernels' and the same every run.
TEST(CudaKernelsTest, HugeFiniteElementsHaveAFiniteSum) {
  SKIP_WITHOUT_GPU();
  Layout l;
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    for (int64_t offset : {0, 1}) {
      l.numel.push_back(300007);
      l.dtype.push_back(dtype);
      l.group.push_back(static_cast<uint32_t>(l.group.size()));
      l.offset_elements.push_back(offset);
    }
  }
  Gradients g(l, 6);
  for (size_t c = 0; c < l.numel.size(); ++c) {
    const int64_t every = c % 2 == 0 ? 1 : 997;  // all huge, or a few among ordinary ones
    for (int64_t i = 0; i < l.numel[c]; i += every) g.Set(c, i, i % 2 == 0 ? 3e19f : -1e30f);
  }
  g.Upload();
  const Sums gpu = GpuSums(g);
  const Sums cpu = CpuSums(g);
  EXPECT_EQ(gpu.flags, std::vector<uint32_t>(l.numel.size(), 0u));
  for (size_t c = 0; c < l.numel.size(); ++c) {
    ASSERT_TRUE(std::isfinite(gpu.sums[c])) << c;
    EXPECT_NEAR(gpu.sums[c] / cpu.sums[c], 1.0, 1e-6) << c;
  }
  EXPECT_EQ(GpuSums(g).sums, gpu.sums);
}

TEST(CudaKernelsTest, ScaleEqualsTheCpuKernelBitForBit) {
  SKIP_WITHOUT_GPU();
  Gradients g(MixedLayout(), 4);
  const std::vector<unsigned char> pristine = g.host();
  const float scales[] = {0.37f, 1.0f, 0.0f, 3.5f, 1e-3f};
  ChunkTable cpu_table = g.Table(false);
  ASSERT_TRUE(CpuScaleGroups(cpu_table, scales, nullptr).ok());  // host copy only
  ChunkTable table = g.Table(true);
  auto dt = DeviceChunkTable::Upload(table, nullptr);
  ASSERT_TRUE(dt.ok());
  float* d_scales;
  cudaMalloc(&d_scales, sizeof scales);
  cudaMemcpy(d_scales, scales, sizeof scales, cudaMemcpyHostToDevice);
  for (int loads : kLoadSettings) {
    cudaMemcpy(g.device(), pristine.data(), pristine.size(), cudaMemcpyHostToDevice);
    ASSERT_TRUE(LaunchScaleGroups(*dt, d_scales, nullptr, loads).ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_TRUE(g.Download() == g.host())
        << "device scaling differs from the CPU kernel with " << loads << " loads in flight";
  }
  cudaFree(d_scales);
}

TEST(CudaKernelsTest, StatsKernelEqualsTheHostRule) {
  SKIP_WITHOUT_GPU();
  RuleParams p;
  std::vector<GroupStats> host(3);
  GroupStats* d_stats;
  double* d_sums;
  uint32_t* d_flags;
  StepOutcome* d_out;
  float* d_scales;
  cudaMalloc(&d_stats, 3 * sizeof(GroupStats));
  cudaMemcpy(d_stats, host.data(), 3 * sizeof(GroupStats), cudaMemcpyHostToDevice);
  cudaMalloc(&d_sums, 3 * sizeof(double));
  cudaMalloc(&d_flags, 4 * sizeof(uint32_t));  // one more: LaunchApplyRule's
  cudaMalloc(&d_out, 3 * sizeof(StepOutcome));
  cudaMalloc(&d_scales, 3 * sizeof(float));
  std::mt19937 rng(5);
  std::lognormal_distribution<double> norm(0, 1);
  for (int step = 0; step < 200; ++step) {
    double sums[3];
    uint32_t flags[3] = {0, step % 50 == 7, 0};
    for (double& s : sums) s = std::pow(norm(rng) * (step == 100 ? 1e4 : 1), 2);
    cudaMemcpy(d_sums, sums, sizeof sums, cudaMemcpyHostToDevice);
    cudaMemcpy(d_flags, flags, sizeof flags, cudaMemcpyHostToDevice);
    ASSERT_TRUE(
        LaunchApplyRule(p, d_stats, d_sums, d_flags, nullptr, 3, d_out, d_scales, nullptr).ok());
    StepOutcome out[3];
    cudaMemcpy(out, d_out, sizeof out, cudaMemcpyDeviceToHost);
    for (int g = 0; g < 3; ++g) {
      // Group 1's non-finite steps are skipped whole: the other groups' too.
      const StepOutcome want = ApplyRuleInStep(p, &host[g], sums[g], flags[g] != 0, flags[1] != 0);
      // The same IEEE operations in the same order (no FMA, no pow): the same bits.
      EXPECT_EQ(out[g].scale, want.scale) << step;
      EXPECT_EQ(out[g].stabilized_norm, want.stabilized_norm) << step;
      EXPECT_EQ(out[g].z, want.z) << step;
      EXPECT_EQ(out[g].flags, want.flags) << step;
    }
  }
  std::vector<GroupStats> device(3);
  cudaMemcpy(device.data(), d_stats, 3 * sizeof(GroupStats), cudaMemcpyDeviceToHost);
  for (int g = 0; g < 3; ++g) {
    EXPECT_EQ(std::memcmp(&device[g], &host[g], sizeof(GroupStats)), 0) << "group " << g;
  }
  cudaFree(d_stats);
  cudaFree(d_sums);
  cudaFree(d_flags);
  cudaFree(d_out);
  cudaFree(d_scales);
}

// Device memory for `n` values of T, filled from `values` when given; freed with the object.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n, const T* values = nullptr) : n_(n) {
    EXPECT_EQ(cudaMalloc(&d_, std::max<size_t>(1, n) * sizeof(T)), cudaSuccess);
    if (values != nullptr) cudaMemcpy(d_, values, n * sizeof(T), cudaMemcpyHostToDevice);
  }
  ~DeviceArray() { cudaFree(d_); }
  T* get() { return d_; }
  std::vector<T> Read() const {
    std::vector<T> out(n_);
    cudaMemcpy(out.data(), d_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
    return out;
  }

 private:
  size_t n_;
  T* d_ = nullptr;
};

// A non-finite group skips the whole step, whichever thread and block it falls to: here the
// last of 65,536 groups, the others' statistics untouched and their outcomes "skipped with it".
TEST(CudaKernelsTest, OneNonFiniteGroupOfManySkipsEveryGroupsStep) {
  SKIP_WITHOUT_GPU();
  constexpr uint32_t kGroups = 65536;
  std::vector<GroupStats> start(kGroups);
  for (GroupStats& s : start) s.t = 5;
  std::vector<double> sums(kGroups, 4.0);
  std::vector<uint32_t> flags(kGroups + 1, 0);  // one more: LaunchApplyRule's
  flags[kGroups - 1] = 1;
  DeviceArray<GroupStats> stats(kGroups, start.data());
  DeviceArray<double> d_sums(kGroups, sums.data());
  DeviceArray<uint32_t> d_flags(kGroups + 1, flags.data());
  DeviceArray<StepOutcome> outcomes(kGroups);
  DeviceArray<float> scales(kGroups);
  ASSERT_TRUE(LaunchApplyRule(RuleParams{}, stats.get(), d_sums.get(), d_flags.get(), nullptr,
                              kGroups, outcomes.get(), scales.get(), nullptr)
                  .ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<StepOutcome> out = outcomes.Read();
  const std::vector<GroupStats> after = stats.Read();
  for (uint32_t g = 0; g + 1 < kGroups; ++g) {
    ASSERT_EQ(out[g].flags, kFlagSkipped | kFlagWithStep) << "group " << g;
    ASSERT_EQ(out[g].norm, 2.0) << "group " << g;
    ASSERT_EQ(after[g].t, 5u) << "group " << g;
  }
  EXPECT_TRUE(std::isnan(out[kGroups - 1].norm));
  EXPECT_EQ(scales.Read(), std::vector<float>(kGroups, 0.0f));  // every group's zeroed
}

// A step voided before its sums reads nothing, and its flags have the rule kernel keep the
// statistics and give scale 1, which the scale kernel writes nothing for.
TEST(CudaKernelsTest, AVoidedStepNeitherReadsNorWritesTheGradients) {
  SKIP_WITHOUT_GPU();
  Gradients g(MixedLayout(), 6);
  g.Set(100, 5, NAN);  // flagged, were it read
  g.Upload();
  const std::vector<unsigned char> before = g.Download();
  ChunkTable table = g.Table(true);
  auto dt = DeviceChunkTable::Upload(table, nullptr);
  ASSERT_TRUE(dt.ok());
  const uint32_t one = 1;
  DeviceArray<uint32_t> voided(1, &one);
  DeviceArray<TilePartial> partials(table.tiles().size());
  DeviceArray<double> sums(table.num_groups());
  DeviceArray<uint32_t> flags(table.num_groups() + 1);  // one more: LaunchApplyRule's
  std::vector<GroupStats> start(table.num_groups());
  for (GroupStats& s : start) s.t = 5;
  DeviceArray<GroupStats> stats(start.size(), start.data());
  DeviceArray<StepOutcome> outcomes(table.num_groups());
  DeviceArray<float> scales(table.num_groups());
  ASSERT_TRUE(
      LaunchGroupSumSquares(*dt, partials.get(), sums.get(), flags.get(), nullptr, voided.get())
          .ok());
  ASSERT_TRUE(LaunchApplyRule(RuleParams{}, stats.get(), sums.get(), flags.get(), nullptr,
                              table.num_groups(), outcomes.get(), scales.get(), nullptr)
                  .ok());
  ASSERT_TRUE(LaunchScaleGroups(*dt, scales.get(), nullptr).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(sums.Read(), std::vector<double>(table.num_groups(), 0.0));
  std::vector<uint32_t> flagged = flags.Read();
  EXPECT_EQ(flagged.back(), 0u);  // a voided step has no non-finite group
  flagged.pop_back();
  EXPECT_EQ(flagged, std::vector<uint32_t>(table.num_groups(), kStepVoided));
  EXPECT_EQ(scales.Read(), std::vector<float>(table.num_groups(), 1.0f));
  for (const GroupStats& s : stats.Read()) EXPECT_EQ(s.t, 5u);
  for (const StepOutcome& o : outcomes.Read()) EXPECT_EQ(o.flags, kFlagSkipped | kFlagVoided);
  EXPECT_TRUE(g.Download() == before);
}

// The cross-node stage's kernels around a stand-in for the all-reduce (two nodes that sent the
// same vector: every value doubled), for more groups than one block has threads. A step voided
// on any GPU is voided on every one.
TEST(CudaKernelsTest, CrossNodeMergeFollowsEachGroupsModeAndAnAbortReachesEveryGroup) {
  SKIP_WITHOUT_GPU();
  constexpr uint32_t n = 300;
  std::vector<double> own(n);
  std::vector<uint32_t> flags(n);
  std::vector<uint8_t> modes(n);
  const uint8_t kModes[] = {kAddAndTake, kKeepOwn, kTakeOnly, kUnregistered};
  for (uint32_t i = 0; i < n; ++i) {
    own[i] = i + 1.0;
    flags[i] = i % 7 == 0 ? 1 : (i == 5 ? kStepVoided : 0);
    modes[i] = kModes[i % 4];
  }
  DeviceArray<double> sums(n, own.data());
  DeviceArray<uint32_t> d_flags(n, flags.data());
  DeviceArray<uint8_t> d_modes(n, modes.data());
  DeviceArray<double> exchange(kCrossNodeCheckSize + 2 * n);
  ASSERT_TRUE(LaunchCrossNodePrepare(CrossNodeCheck{5, 1, 2, n}, sums.get(), d_flags.get(),
                                     d_modes.get(), n, exchange.get(), nullptr)
                  .ok());
  std::vector<double> reduced = exchange.Read();
  for (uint32_t i = 0; i < n; ++i) {
    ASSERT_EQ(reduced[kCrossNodeCheckSize + i], modes[i] == kAddAndTake ? own[i] : 0.0) << i;
    ASSERT_EQ(reduced[kCrossNodeCheckSize + n + i], flags[i] == kStepVoided ? kVoidedMark
                                                    : flags[i] != 0         ? 1.0
                                                                            : 0.0)
        << i;
  }
  for (double& v : reduced) v *= 2;
  // Group 6's step was voided on the other node only (its worker went away): voided here too,
  // not taken for a non-finite step.
  reduced[kCrossNodeCheckSize + n + 6] += kVoidedMark;
  auto merge = [&](const std::vector<double>& vector, const int* d_aborted) {
    DeviceArray<double> in(vector.size(), vector.data());
    DeviceArray<double> out_sums(n, own.data());
    DeviceArray<uint32_t> out_flags(n, flags.data());
    EXPECT_TRUE(LaunchCrossNodeMerge(in.get(), d_modes.get(), d_aborted, n, out_sums.get(),
                                     out_flags.get(), nullptr)
                    .ok());
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    return std::make_pair(out_sums.Read(), out_flags.Read());
  };
  const auto [merged, merged_flags] = merge(reduced, nullptr);
  for (uint32_t i = 0; i < n; ++i) {
    if (i == 5 || i == 6) {
      EXPECT_EQ(merged_flags[i], kStepVoided) << i;  // voided on this node, or on the other
      EXPECT_EQ(merged[i], own[i]) << i;
      continue;
    }
    const bool own_sums = modes[i] == kKeepOwn || modes[i] == kUnregistered;
    EXPECT_EQ(merged[i], own_sums ? own[i] : reduced[kCrossNodeCheckSize + i]) << i;
    EXPECT_EQ(merged_flags[i], flags[i]) << i;
  }
  // An aborted all-reduce voids the step in every group (it is no disagreement of the nodes).
  const int aborted = 1;
  DeviceArray<int> d_aborted(1, &aborted);
  EXPECT_EQ(merge(reduced, d_aborted.get()).second, std::vector<uint32_t>(n, kStepVoided));
  std::vector<uint32_t> disagree(n, kNodesDisagree);
  disagree[5] = kStepVoided;
  std::vector<double> other_step = reduced;
  other_step[0] += 1;  // the nodes were at different steps
  EXPECT_EQ(merge(other_step, nullptr).second, disagree);
}

// A group no worker registers (kUnregistered: only an import brought it) keeps its statistics
// and is scaled by 1, its outcome flagged so; the registered group beside it steps as ever.
TEST(CudaKernelsTest, AnUnregisteredGroupKeepsItsStatistics) {
  SKIP_WITHOUT_GPU();
  std::vector<GroupStats> start(2);
  start[1].t = 77;
  start[1].m = 2.0;
  const std::vector<double> sums = {4.0, 0.0};
  const std::vector<uint32_t> flags = {0, 0, 0};  // one more: LaunchApplyRule's
  const std::vector<uint8_t> modes = {kAddAndTake, kUnregistered};
  DeviceArray<GroupStats> stats(2, start.data());
  DeviceArray<double> d_sums(2, sums.data());
  DeviceArray<uint32_t> d_flags(3, flags.data());
  DeviceArray<uint8_t> d_modes(2, modes.data());
  DeviceArray<StepOutcome> outcomes(2);
  DeviceArray<float> scales(2);
  ASSERT_TRUE(LaunchApplyRule(RuleParams{}, stats.get(), d_sums.get(), d_flags.get(), d_modes.get(),
                              2, outcomes.get(), scales.get(), nullptr)
                  .ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<GroupStats> after = stats.Read();
  const std::vector<StepOutcome> out = outcomes.Read();
  EXPECT_EQ(std::memcmp(&after[1], &start[1], sizeof(GroupStats)), 0);
  EXPECT_EQ(out[1].flags, kFlagUnregistered);
  EXPECT_EQ(scales.Read()[1], 1.0f);
  EXPECT_EQ(after[0].t, 1u);
  EXPECT_NE(out[0].flags & kFlagAccepted, 0u);
}

}  // namespace
}  // namespace gstab
