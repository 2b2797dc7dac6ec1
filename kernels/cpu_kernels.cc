#include "kernels/cpu_kernels.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/half.h"

namespace gstab {
namespace {

// Independent accumulators per tile: wide enough to fill the vector units and to keep fp32
// rounding error small (each lane sums tile/kLanes elements).
constexpr int kLanes = 32;

// Per-dtype loads, stores and non-finite tests on the raw bits.
struct F32 {
  using Raw = uint32_t;
  static float Load(Raw r) { return BitsToFloat(r); }
  static Raw Store(float f) { return FloatToBits(f); }
  static uint32_t NonFinite(Raw r) { return (r & 0x7f800000u) == 0x7f800000u; }
};
struct BF16 {
  using Raw = uint16_t;
  static float Load(Raw r) { return BFloat16ToFloat(r); }
  static Raw Store(float f) { return FloatToBFloat16(f); }
  static uint32_t NonFinite(Raw r) { return (r & 0x7f80u) == 0x7f80u; }
};
struct F16 {
  using Raw = uint16_t;
  static float Load(Raw r) { return Float16ToFloat(r); }
  static Raw Store(float f) { return FloatToFloat16(f); }
  static uint32_t NonFinite(Raw r) { return (r & 0x7c00u) == 0x7c00u; }
};

// Elements summed in fp32 before each lane is folded into fp64: keeps each fp32 lane's sum
// short (kFoldElements / kLanes terms) so its rounding error stays near 1e-7 relative.
constexpr int64_t kFoldElements = 2048;

template <typename T>
TilePartial SumSquaresTile(const void* data, int64_t begin, int64_t count) {
  using Raw = typename T::Raw;
  const Raw* p = static_cast<const Raw*>(data) + begin;
  double total[kLanes] = {};
  uint32_t bad[kLanes] = {};
  for (int64_t start = 0; start < count; start += kFoldElements) {
    const int64_t end = std::min(count, start + kFoldElements);
    float acc[kLanes] = {};
    int64_t i = start;
    for (; i + kLanes <= end; i += kLanes) {
      Raw r[kLanes];
      std::memcpy(r, p + i, sizeof r);
      for (int j = 0; j < kLanes; ++j) {
        const float x = T::Load(r[j]);
        acc[j] += x * x;
        bad[j] |= T::NonFinite(r[j]);
      }
    }
    for (int j = 0; i < end; ++i, ++j) {
      const float x = T::Load(p[i]);
      acc[j] += x * x;
      bad[j] |= T::NonFinite(p[i]);
    }
    for (int j = 0; j < kLanes; ++j) total[j] += static_cast<double>(acc[j]);
  }
  TilePartial out;
  for (int j = 0; j < kLanes; ++j) {
    out.sum_of_squares += total[j];
    out.non_finite |= bad[j];
  }
  return out;
}

template <typename T>
void ScaleTile(void* data, int64_t begin, int64_t count, float scale) {
  using Raw = typename T::Raw;
  Raw* p = static_cast<Raw*>(data) + begin;
  if (scale == 0.0f) {
    std::memset(p, 0, static_cast<size_t>(count) * sizeof(Raw));
    return;
  }
  for (int64_t i = 0; i < count; ++i) p[i] = T::Store(T::Load(p[i]) * scale);
}

TilePartial SumSquares(const Chunk& c, const Tile& t) {
  switch (c.dtype) {
    case DType::kFloat32:
      return SumSquaresTile<F32>(c.data, t.begin, t.count);
    case DType::kBFloat16:
      return SumSquaresTile<BF16>(c.data, t.begin, t.count);
    case DType::kFloat16:
      return SumSquaresTile<F16>(c.data, t.begin, t.count);
  }
  return {};
}

void Scale(const Chunk& c, const Tile& t, float scale) {
  switch (c.dtype) {
    case DType::kFloat32:
      return ScaleTile<F32>(c.data, t.begin, t.count, scale);
    case DType::kBFloat16:
      return ScaleTile<BF16>(c.data, t.begin, t.count, scale);
    case DType::kFloat16:
      return ScaleTile<F16>(c.data, t.begin, t.count, scale);
  }
}

int ThreadsFor(const ChunkTable& table, CpuExecutor* executor) {
  if (executor == nullptr) return 1;
  const int64_t wanted = std::max<int64_t>(1, table.total_bytes() / kCpuMinBytesPerThread);
  return static_cast<int>(std::min<int64_t>(wanted, executor->num_threads()));
}

void ForEachTile(const ChunkTable& table, CpuExecutor* executor,
                 const std::function<void(int64_t)>& fn) {
  const auto n = static_cast<int64_t>(table.tiles().size());
  if (executor == nullptr) {
    for (int64_t i = 0; i < n; ++i) fn(i);
  } else {
    executor->ParallelFor(n, ThreadsFor(table, executor), fn);
  }
}

}  // namespace

absl::Status CpuGroupSumSquares(const ChunkTable& table, absl::Span<TilePartial> scratch,
                                absl::Span<double> sum_of_squares, absl::Span<uint32_t> non_finite,
                                CpuExecutor* executor) {
  if (scratch.size() < CpuSumSquaresScratchSize(table)) {
    return absl::InvalidArgumentError(absl::StrCat("scratch holds ", scratch.size(),
                                                   " tile partials, the table needs ",
                                                   CpuSumSquaresScratchSize(table)));
  }
  if (sum_of_squares.size() < table.num_groups() || non_finite.size() < table.num_groups()) {
    return absl::InvalidArgumentError(
        absl::StrCat("outputs must hold ", table.num_groups(), " groups"));
  }
  const std::vector<Tile>& tiles = table.tiles();
  const std::vector<Chunk>& chunks = table.chunks();
  ForEachTile(table, executor, [&](int64_t i) {
    scratch[i] = SumSquares(chunks[tiles[i].chunk], tiles[i]);
  });
  std::fill_n(sum_of_squares.begin(), table.num_groups(), 0.0);
  std::fill_n(non_finite.begin(), table.num_groups(), 0u);
  for (size_t i = 0; i < tiles.size(); ++i) {
    const uint32_t g = chunks[tiles[i].chunk].group;
    sum_of_squares[g] += scratch[i].sum_of_squares;
    non_finite[g] |= scratch[i].non_finite;
  }
  return absl::OkStatus();
}

absl::Status CpuScaleGroups(const ChunkTable& table, absl::Span<const float> scales,
                            CpuExecutor* executor) {
  if (scales.size() < table.num_groups()) {
    return absl::InvalidArgumentError(absl::StrCat("scales hold ", scales.size(),
                                                   " groups, the table has ", table.num_groups()));
  }
  const std::vector<Tile>& tiles = table.tiles();
  const std::vector<Chunk>& chunks = table.chunks();
  ForEachTile(table, executor, [&](int64_t i) {
    const Chunk& c = chunks[tiles[i].chunk];
    const float s = scales[c.group];
    if (s != 1.0f) Scale(c, tiles[i], s);
  });
  return absl::OkStatus();
}

}  // namespace gstab
