#include "kernels/cpu_kernels.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu_tiles.h"
#include "kernels/half.h"

namespace gstab {
namespace {

// Gradient storage for one dtype, with helpers to read elements back as float.
class Buffer {
 public:
  Buffer(DType dtype, int64_t numel, uint32_t seed, int64_t offset = 0)
      : dtype_(dtype), offset_(offset), bytes_((numel + offset + 8) * ElementSize(dtype)) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (int64_t i = 0; i < numel; ++i) Set(i, dist(rng));
  }
  void* data() { return bytes_.data() + offset_ * ElementSize(dtype_); }
  void Set(int64_t i, float f) {
    unsigned char* p = static_cast<unsigned char*>(data()) + i * ElementSize(dtype_);
    if (dtype_ == DType::kFloat32) {
      std::memcpy(p, &f, 4);
    } else {
      const uint16_t h = dtype_ == DType::kBFloat16 ? FloatToBFloat16(f) : FloatToFloat16(f);
      std::memcpy(p, &h, 2);
    }
  }
  float Get(int64_t i) {
    const unsigned char* p = static_cast<unsigned char*>(data()) + i * ElementSize(dtype_);
    if (dtype_ == DType::kFloat32) return BitsToFloat(Load<uint32_t>(p));
    const uint16_t h = Load<uint16_t>(p);
    return dtype_ == DType::kBFloat16 ? BFloat16ToFloat(h) : Float16ToFloat(h);
  }

 private:
  template <typename T>
  static T Load(const unsigned char* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  DType dtype_;
  int64_t offset_;
  std::vector<unsigned char> bytes_;
};

struct Result {
  std::vector<double> sums;
  std::vector<uint32_t> non_finite;
};

Result GroupSums(const ChunkTable& table, CpuExecutor* executor) {
  std::vector<TilePartial> scratch(CpuSumSquaresScratchSize(table));
  Result r{std::vector<double>(table.num_groups()), std::vector<uint32_t>(table.num_groups())};
  absl::Status s = CpuGroupSumSquares(table, absl::MakeSpan(scratch), absl::MakeSpan(r.sums),
                                      absl::MakeSpan(r.non_finite), executor);
  EXPECT_TRUE(s.ok()) << s;
  return r;
}

long double ReferenceSum(Buffer& b, int64_t numel) {
  long double s = 0;
  for (int64_t i = 0; i < numel; ++i) s += static_cast<long double>(b.Get(i)) * b.Get(i);
  return s;
}

float RoundTo(DType dtype, float f) {
  switch (dtype) {
    case DType::kFloat32:
      return f;
    case DType::kBFloat16:
      return BFloat16ToFloat(FloatToBFloat16(f));
    case DType::kFloat16:
      return Float16ToFloat(FloatToFloat16(f));
  }
  return f;
}

constexpr DType kDTypes[] = {DType::kFloat32, DType::kBFloat16, DType::kFloat16};

TEST(CpuKernelsTest, SumOfSquaresMatchesReferenceForEveryDTypeSizeAndAlignment) {
  CpuExecutor executor(4);
  for (DType dtype : kDTypes) {
    for (int64_t numel : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{1000003}}) {
      for (int64_t offset : {0, 1, 3}) {
        Buffer b(dtype, numel, static_cast<uint32_t>(numel + offset), offset);
        absl::StatusOr<ChunkTable> table =
            ChunkTable::Create({Chunk{b.data(), numel, dtype, 0}}, 1);
        ASSERT_TRUE(table.ok()) << table.status();
        Result r = GroupSums(*table, &executor);
        const long double ref = ReferenceSum(b, numel);
        if (numel == 0) {
          EXPECT_EQ(r.sums[0], 0.0);
        } else {
          EXPECT_NEAR(r.sums[0] / static_cast<double>(ref), 1.0, 2e-6)
              << DTypeName(dtype) << " numel " << numel << " offset " << offset;
        }
        EXPECT_EQ(r.non_finite[0], 0u);
      }
    }
  }
}

TEST(CpuKernelsTest, NaNAndInfAreFlaggedAtAnyPositionInTheirGroupOnly) {
  const int64_t numel = 3 * ChunkTable::kDefaultTileElements + 45;
  for (DType dtype : kDTypes) {
    for (int64_t pos : {int64_t{0}, int64_t{31}, int64_t{32}, ChunkTable::kDefaultTileElements - 1,
                        ChunkTable::kDefaultTileElements, numel - 13, numel - 1}) {
      for (float bad : {NAN, INFINITY, -INFINITY}) {
        Buffer poisoned(dtype, numel, 1), clean(dtype, 100, 2);
        poisoned.Set(pos, bad);
        absl::StatusOr<ChunkTable> table = ChunkTable::Create(
            {Chunk{clean.data(), 100, dtype, 0}, Chunk{poisoned.data(), numel, dtype, 1}}, 2);
        ASSERT_TRUE(table.ok());
        Result r = GroupSums(*table, nullptr);
        EXPECT_EQ(r.non_finite[0], 0u);
        EXPECT_EQ(r.non_finite[1], 1u) << DTypeName(dtype) << " at " << pos << " value " << bad;
      }
    }
  }
}

// Finite elements beyond about 1e18 overflow an fp32 sum of their squares: their sum is taken in
// fp64 instead, so it stays finite and is not mistaken for a non-finite step. fp32 and bf16
// (fp16 cannot hold such values); a few huge elements among ordinary ones, and all huge.
TEST(CpuKernelsTest, HugeFiniteElementsHaveAFiniteSum) {
  const int64_t numel = 2 * ChunkTable::kDefaultTileElements + 77;
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    for (int64_t every : {int64_t{1}, int64_t{997}}) {
      Buffer b(dtype, numel, 5);
      for (int64_t i = 0; i < numel; i += every) b.Set(i, i % 2 == 0 ? 3e19f : -1e30f);
      absl::StatusOr<ChunkTable> table = ChunkTable::Create({Chunk{b.data(), numel, dtype, 0}}, 1);
      ASSERT_TRUE(table.ok()) << table.status();
      Result r = GroupSums(*table, nullptr);
      EXPECT_EQ(r.non_finite[0], 0u) << DTypeName(dtype) << " every " << every;
      ASSERT_TRUE(std::isfinite(r.sums[0])) << DTypeName(dtype) << " every " << every;
      CpuExecutor executor(4);
      EXPECT_EQ(GroupSums(*table, &executor).sums, r.sums);  // the same bits on 4 threads
      EXPECT_NEAR(r.sums[0] / static_cast<double>(ReferenceSum(b, numel)), 1.0, 2e-6)
          << DTypeName(dtype) << " every " << every;
    }
  }
}

// Many small tensors in several groups plus one huge tensor, as in a real model.
struct Model {
  std::vector<Buffer> buffers;
  std::vector<Chunk> chunks;
  std::vector<long double> ref;
};

Model MakeModel(DType dtype, uint32_t groups) {
  Model m;
  std::mt19937 rng(9);
  std::uniform_int_distribution<int64_t> size(1, 300);
  m.ref.assign(groups, 0);
  m.buffers.reserve(1001);
  for (int i = 0; i < 1001; ++i) {
    const int64_t numel = i == 500 ? 1000003 : size(rng);
    m.buffers.emplace_back(dtype, numel, static_cast<uint32_t>(i), i % 3);
    const uint32_t group = static_cast<uint32_t>(i) % groups;
    m.chunks.push_back(Chunk{m.buffers.back().data(), numel, dtype, group});
    m.ref[group] += ReferenceSum(m.buffers.back(), numel);
  }
  return m;
}

TEST(CpuKernelsTest, ManySmallTensorsAndOneHugeTensorPerGroup) {
  for (DType dtype : kDTypes) {
    Model m = MakeModel(dtype, 7);
    absl::StatusOr<ChunkTable> table = ChunkTable::Create(m.chunks, 7);
    ASSERT_TRUE(table.ok());
    CpuExecutor executor(3);
    Result r = GroupSums(*table, &executor);
    for (uint32_t g = 0; g < 7; ++g) {
      EXPECT_NEAR(r.sums[g] / static_cast<double>(m.ref[g]), 1.0, 2e-6) << "group " << g;
    }
  }
}

TEST(CpuKernelsTest, ResultsAreBitIdenticalAcrossRunsAndThreadCounts) {
  Model m = MakeModel(DType::kFloat32, 5);
  // Also a single 64 MiB tensor, large enough to use every thread.
  Buffer big(DType::kFloat32, int64_t{1} << 24, 77);
  m.chunks.push_back(Chunk{big.data(), int64_t{1} << 24, DType::kFloat32, 4});
  absl::StatusOr<ChunkTable> table = ChunkTable::Create(m.chunks, 5);
  ASSERT_TRUE(table.ok());
  const Result first = GroupSums(*table, nullptr);
  for (int threads : {1, 2, 3, 8}) {
    CpuExecutor executor(threads);
    for (int run = 0; run < 3; ++run) {
      const Result again = GroupSums(*table, &executor);
      ASSERT_EQ(std::memcmp(first.sums.data(), again.sums.data(), 5 * sizeof(double)), 0)
          << threads << " threads, run " << run;
    }
  }
}

TEST(CpuKernelsTest, ScaleMultipliesEachGroupAndRoundsToItsDType) {
  CpuExecutor executor(2);
  for (DType dtype : kDTypes) {
    Buffer a(dtype, 1000003, 1, 1), b(dtype, 77, 2), c(dtype, 5, 3);
    Buffer a0(dtype, 1000003, 1, 1), b0(dtype, 77, 2);
    c.Set(2, NAN);
    absl::StatusOr<ChunkTable> table =
        ChunkTable::Create({Chunk{a.data(), 1000003, dtype, 0}, Chunk{b.data(), 77, dtype, 1},
                            Chunk{c.data(), 5, dtype, 2}},
                           3);
    ASSERT_TRUE(table.ok());
    const float scales[] = {0.37f, 1.0f, 0.0f};
    ASSERT_TRUE(CpuScaleGroups(*table, scales, &executor).ok());
    for (int64_t i = 0; i < 1000003; ++i) {
      ASSERT_EQ(a.Get(i), RoundTo(dtype, a0.Get(i) * 0.37f)) << DTypeName(dtype) << " at " << i;
    }
    for (int64_t i = 0; i < 77; ++i) ASSERT_EQ(b.Get(i), b0.Get(i));  // scale 1: untouched
    for (int64_t i = 0; i < 5; ++i) ASSERT_EQ(c.Get(i), 0.0f);        // scale 0 clears NaN too
  }
}

// A chunk whose memory was lost (a worker truncated its shared memory mid-step: its pages are
// gstabd's own private ones from then on) is not scaled, tile by tile from the loss on, so that
// gstabd writes none of those pages; other chunks, of its group too, are scaled.
TEST(CpuKernelsTest, AChunkWhoseMemoryWasLostIsNotScaled) {
  CpuExecutor executor(2);
  const int64_t numel = 5 * ChunkTable::kDefaultTileElements + 3;
  Buffer lost_one(DType::kFloat32, numel, 1), kept(DType::kFloat32, numel, 2);
  Buffer lost0(DType::kFloat32, numel, 1), kept0(DType::kFloat32, numel, 2);
  std::atomic<uint32_t> lost{0}, fine{0};
  absl::StatusOr<ChunkTable> table =
      ChunkTable::Create({Chunk{lost_one.data(), numel, DType::kFloat32, 0, &lost},
                          Chunk{kept.data(), numel, DType::kFloat32, 0, &fine}},
                         1);
  ASSERT_TRUE(table.ok());
  const float scales[] = {0.5f};
  lost = 1;
  ASSERT_TRUE(CpuScaleGroups(*table, scales, &executor).ok());
  for (int64_t i = 0; i < numel; ++i) {
    ASSERT_EQ(lost_one.Get(i), lost0.Get(i)) << "written at " << i;
    ASSERT_EQ(kept.Get(i), kept0.Get(i) * 0.5f) << "not scaled at " << i;
  }
}

// A step's local workers in one loop over all their tiles: each table's sums are bit for bit
// those of its own loop, and each table is scaled as alone, whatever the threads; a table of
// fewer groups than the others, and one of no tiles, take their part.
TEST(CpuKernelsTest, SeveralTablesInOneLoopAreEachAsAlone) {
  Buffer a(DType::kFloat32, 3 << 20, 1), b(DType::kBFloat16, 5000, 2), c(DType::kFloat32, 7, 3);
  Buffer a0(DType::kFloat32, 3 << 20, 1), b0(DType::kBFloat16, 5000, 2);
  std::vector<ChunkTable> tables;
  for (auto chunks :
       {std::vector<Chunk>{Chunk{a.data(), 3 << 20, DType::kFloat32, 0},
                           Chunk{c.data(), 7, DType::kFloat32, 2}},
        std::vector<Chunk>{}, std::vector<Chunk>{Chunk{b.data(), 5000, DType::kBFloat16, 1}}}) {
    absl::StatusOr<ChunkTable> table = ChunkTable::Create(chunks, chunks.empty() ? 0 : 3);
    ASSERT_TRUE(table.ok()) << table.status();
    tables.push_back(*std::move(table));
  }
  const std::vector<const ChunkTable*> pointers = {&tables[0], &tables[1], &tables[2]};
  for (int threads : {1, 2, 3}) {
    CpuExecutor executor(threads);
    std::vector<double> sums(9, -1.0);
    std::vector<uint32_t> flags(9, 7);
    std::vector<absl::Span<double>> sum_spans;
    std::vector<absl::Span<uint32_t>> flag_spans;
    for (size_t t = 0; t < 3; ++t) {
      sum_spans.push_back(absl::MakeSpan(sums).subspan(3 * t, 3));
      flag_spans.push_back(absl::MakeSpan(flags).subspan(3 * t, 3));
    }
    ASSERT_TRUE(CpuGroupSumSquaresOfTables(pointers, sum_spans, flag_spans, &executor).ok());
    for (size_t t : {size_t{0}, size_t{2}}) {
      const Result alone = GroupSums(tables[t], nullptr);
      ASSERT_EQ(std::memcmp(alone.sums.data(), sum_spans[t].data(), 3 * sizeof(double)), 0)
          << "table " << t << ", " << threads << " threads";
    }
    EXPECT_EQ(sums[3], -1.0) << "a table of no groups writes nothing";
  }
  const float scales[] = {0.5f, 0.25f, 1.0f};
  CpuExecutor executor(2);
  ASSERT_TRUE(CpuScaleGroupsOfTables(pointers, scales, &executor).ok());
  for (int64_t i = 0; i < (3 << 20); i += 4099) ASSERT_EQ(a.Get(i), a0.Get(i) * 0.5f) << i;
  for (int64_t i = 0; i < 5000; ++i) {
    ASSERT_EQ(b.Get(i), RoundTo(DType::kBFloat16, b0.Get(i) * 0.25f)) << i;
  }
  const float too_few[] = {1.0f};
  EXPECT_FALSE(CpuScaleGroupsOfTables(pointers, too_few, &executor).ok());
}

// cpu_tiles.h: every instruction-set variant gives identical bits, so a step's results do not
// depend on the host's CPU. The AVX2 tiles are the ones an x86-64 host runs; the generic ones
// run elsewhere (and on x86 without AVX2): both on the same chunks, of every dtype, at odd
// starts and lengths, with huge values (the fp32 overflow's fallback) and a NaN.
TEST(CpuKernelsTest, TheGenericAndAvx2TilesGiveIdenticalBits) {
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("f16c")) {
    GTEST_SKIP() << "this CPU has no AVX2";
  }
  for (DType dtype : kDTypes) {
    for (int64_t numel : {1, 7, 15, 16, 17, 255, 4099, 70001}) {
      for (int64_t offset : {0, 1, 3}) {
        for (int special = 0; special < 3; ++special) {
          SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " numel " << numel << " offset "
                                            << offset << " special " << special);
          Buffer a(dtype, numel, static_cast<uint32_t>(numel + offset), offset);
          Buffer b(dtype, numel, static_cast<uint32_t>(numel + offset), offset);
          for (int64_t i = 0; i < numel; i += 5) {  // huge values: squares past fp32's range
            if (special == 1) a.Set(i, 3e38f), b.Set(i, 3e38f);
          }
          if (special == 2) a.Set(numel / 2, NAN), b.Set(numel / 2, NAN);
          const Chunk ca{a.data(), numel, dtype, 0}, cb{b.data(), numel, dtype, 0};
          for (const Tile& tile : {Tile{0, 0, numel}, Tile{0, numel / 3, numel - numel / 3}}) {
            const TilePartial g = cpu_tiles_generic::SumOfSquares(ca, tile);
            const TilePartial v = cpu_tiles_avx2::SumOfSquares(ca, tile);
            EXPECT_EQ(std::memcmp(&g.sum_of_squares, &v.sum_of_squares, sizeof(double)), 0)
                << g.sum_of_squares << " against " << v.sum_of_squares;
            EXPECT_EQ(g.non_finite, v.non_finite);
          }
          for (float scale : {0.37f, 3.1f}) {
            cpu_tiles_generic::Scale(ca, Tile{0, 0, numel}, scale);
            cpu_tiles_avx2::Scale(cb, Tile{0, 0, numel}, scale);
            ASSERT_EQ(std::memcmp(a.data(), b.data(), numel * ElementSize(dtype)), 0) << scale;
          }
        }
      }
    }
  }
#else
  GTEST_SKIP() << "no AVX2 tiles on this architecture";
#endif
}

TEST(CpuKernelsTest, BadTablesAndSpansAreRejectedWithAReason) {
  float x[4] = {};
  EXPECT_EQ(ChunkTable::Create({Chunk{x, 4, DType::kFloat32, 2}}, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ChunkTable::Create({Chunk{nullptr, 4, DType::kFloat32, 0}}, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ChunkTable::Create({Chunk{x, -1, DType::kFloat32, 0}}, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto misaligned = reinterpret_cast<unsigned char*>(x) + 1;
  absl::Status s = ChunkTable::Create({Chunk{misaligned, 2, DType::kFloat32, 0}}, 1).status();
  EXPECT_NE(s.message().find("aligned"), std::string::npos) << s;

  absl::StatusOr<ChunkTable> table = ChunkTable::Create({Chunk{x, 4, DType::kFloat32, 0}}, 1);
  ASSERT_TRUE(table.ok());
  double sums[1];
  uint32_t flags[1];
  EXPECT_EQ(CpuGroupSumSquares(*table, {}, sums, flags, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CpuScaleGroups(*table, {}, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace gstab
