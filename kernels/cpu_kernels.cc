#include "kernels/cpu_kernels.h"

#include <algorithm>
#include <functional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu_tiles.h"

namespace gstab {
namespace {

// Runs fn(t, i, at) for every tile i of every table t, `at` its place among all the tables'
// tiles (one table's after another), over as many threads as the tables' bytes together call
// for.
void ForEachTile(absl::Span<const ChunkTable* const> tables, CpuExecutor* executor,
                 const std::function<void(size_t, int64_t, int64_t)>& fn) {
  std::vector<int64_t> first(tables.size() + 1, 0);  // table t's tiles: [first[t], first[t+1])
  int64_t bytes = 0;
  for (size_t t = 0; t < tables.size(); ++t) {
    first[t + 1] = first[t] + static_cast<int64_t>(tables[t]->tiles().size());
    bytes += tables[t]->total_bytes();
  }
  auto tile = [&](int64_t at) {
    const size_t t =
        static_cast<size_t>(std::upper_bound(first.begin(), first.end(), at) - first.begin() - 1);
    fn(t, at - first[t], at);
  };
  if (executor == nullptr) {
    for (int64_t at = 0; at < first.back(); ++at) tile(at);
    return;
  }
  const int64_t wanted = std::max<int64_t>(1, bytes / kCpuMinBytesPerThread);
  executor->ParallelFor(first.back(),
                        static_cast<int>(std::min<int64_t>(wanted, executor->num_threads())), tile);
}

absl::Status CheckScales(const ChunkTable& table, absl::Span<const float> scales) {
  if (scales.size() >= table.num_groups()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("scales hold ", scales.size(), " groups, the table has ", table.num_groups()));
}

absl::Status CheckOutputs(const ChunkTable& table, size_t sums, size_t flags) {
  if (sums >= table.num_groups() && flags >= table.num_groups()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("outputs must hold ", table.num_groups(), " groups"));
}

// Each tile's partial into scratch (the tables' tiles one after another), then each table's
// groups summed in its tile order.
void SumTables(absl::Span<const ChunkTable* const> tables, absl::Span<TilePartial> scratch,
               absl::Span<const absl::Span<double>> sum_of_squares,
               absl::Span<const absl::Span<uint32_t>> non_finite, CpuExecutor* executor) {
  const CpuTileFunctions& fns = BestCpuTileFunctions();
  ForEachTile(tables, executor, [&](size_t t, int64_t i, int64_t at) {
    const Tile& tile = tables[t]->tiles()[i];
    scratch[at] = fns.sum_of_squares(tables[t]->chunks()[tile.chunk], tile);
  });
  const TilePartial* partial = scratch.data();  // the tables' tiles, one table's after another
  for (size_t t = 0; t < tables.size(); ++t) {
    const ChunkTable& table = *tables[t];
    std::fill_n(sum_of_squares[t].begin(), table.num_groups(), 0.0);
    std::fill_n(non_finite[t].begin(), table.num_groups(), 0u);
    for (const Tile& tile : table.tiles()) {
      const uint32_t g = table.chunks()[tile.chunk].group;
      sum_of_squares[t][g] += partial->sum_of_squares;
      non_finite[t][g] |= partial->non_finite;
      ++partial;
    }
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
  if (absl::Status s = CheckOutputs(table, sum_of_squares.size(), non_finite.size()); !s.ok()) {
    return s;
  }
  const ChunkTable* tables[] = {&table};
  SumTables(tables, scratch, {&sum_of_squares, 1}, {&non_finite, 1}, executor);
  return absl::OkStatus();
}

absl::Status CpuScaleGroups(const ChunkTable& table, absl::Span<const float> scales,
                            CpuExecutor* executor) {
  const ChunkTable* tables[] = {&table};
  return CpuScaleGroupsOfTables(tables, scales, executor);
}

absl::Status CpuGroupSumSquaresOfTables(absl::Span<const ChunkTable* const> tables,
                                        absl::Span<const absl::Span<double>> sum_of_squares,
                                        absl::Span<const absl::Span<uint32_t>> non_finite,
                                        CpuExecutor* executor) {
  if (sum_of_squares.size() < tables.size() || non_finite.size() < tables.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("outputs must hold ", tables.size(), " tables' groups"));
  }
  size_t tiles = 0;
  for (size_t t = 0; t < tables.size(); ++t) {
    if (absl::Status s = CheckOutputs(*tables[t], sum_of_squares[t].size(), non_finite[t].size());
        !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("table ", t, ": ", s.message()));
    }
    tiles += tables[t]->tiles().size();
  }
  std::vector<TilePartial> scratch(tiles);  // 16 bytes a tile (2 MiB of gradients or less)
  SumTables(tables, absl::MakeSpan(scratch), sum_of_squares, non_finite, executor);
  return absl::OkStatus();
}

absl::Status CpuScaleGroupsOfTables(absl::Span<const ChunkTable* const> tables,
                                    absl::Span<const float> scales, CpuExecutor* executor) {
  for (const ChunkTable* table : tables) {
    if (absl::Status s = CheckScales(*table, scales); !s.ok()) return s;
  }
  const CpuTileFunctions& fns = BestCpuTileFunctions();
  ForEachTile(tables, executor, [&](size_t t, int64_t i, int64_t) {
    const Tile& tile = tables[t]->tiles()[i];
    const Chunk& c = tables[t]->chunks()[tile.chunk];
    const float s = scales[c.group];
    // Checked at each tile: a loss found mid-step leaves the rest of its chunk alone.
    if (s != 1.0f && (c.lost == nullptr || c.lost->load(std::memory_order_relaxed) == 0)) {
      fns.scale(c, tile, s);
    }
  });
  return absl::OkStatus();
}

}  // namespace gstab
