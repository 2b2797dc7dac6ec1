#include "kernels/cpu_kernels.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cpu_tiles.h"

namespace gstab {
namespace {

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
  const CpuTileFunctions& fns = BestCpuTileFunctions();
  ForEachTile(table, executor, [&](int64_t i) {
    scratch[i] = fns.sum_of_squares(chunks[tiles[i].chunk], tiles[i]);
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
    return absl::InvalidArgumentError(
        absl::StrCat("scales hold ", scales.size(), " groups, the table has ", table.num_groups()));
  }
  const std::vector<Tile>& tiles = table.tiles();
  const std::vector<Chunk>& chunks = table.chunks();
  const CpuTileFunctions& fns = BestCpuTileFunctions();
  ForEachTile(table, executor, [&](int64_t i) {
    const Chunk& c = chunks[tiles[i].chunk];
    const float s = scales[c.group];
    if (s != 1.0f) fns.scale(c, tiles[i], s);
  });
  return absl::OkStatus();
}

}  // namespace gstab
