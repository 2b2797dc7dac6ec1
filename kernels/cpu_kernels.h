// CPU kernels of the per-step pipeline: per-group sum of squares with a non-finite flag, and
// an in-place per-group scale. The CUDA twins (kernels/cuda_kernels.h) take the same chunk
// table and produce the same results to fp32 rounding (their sums run in another order, so the
// two backends' sums are not bit for bit the same; each is deterministic on its own).
//
// Deterministic: fp32 accumulation inside a tile (many independent lanes; fp64 for a run of
// huge finite elements whose fp32 sum would overflow, so finite gradients always have a finite
// sum), fp64 across tiles in table order, so results are bit-identical for any thread count.
// Thread-safe as long as calls do not share scratch or write overlapping chunks.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/chunk_table.h"
#include "kernels/cpu_executor.h"

namespace gstab {

// Below this many bytes per thread, extra threads cost more than they save.
inline constexpr int64_t kCpuMinBytesPerThread = int64_t{1} << 21;

// Scratch the caller provides to CpuGroupSumSquares: one TilePartial per tile.
inline size_t CpuSumSquaresScratchSize(const ChunkTable& table) { return table.tiles().size(); }

// Writes, per norm group, the sum of squares of its elements (fp64) and whether any element was
// NaN or Inf (1) or not (0). `executor` may be null (single thread).
// INVALID_ARGUMENT when the spans are smaller than the table requires.
absl::Status CpuGroupSumSquares(const ChunkTable& table, absl::Span<TilePartial> scratch,
                                absl::Span<double> sum_of_squares, absl::Span<uint32_t> non_finite,
                                CpuExecutor* executor);

// Multiplies every element of each group by scales[group] in place: the product in fp32, then
// rounded to the chunk's dtype (nearest-even), as the CUDA kernel does (for bf16 and fp16 this
// can differ from the exact product rounded once by one unit in the last place). A scale of exactly
// 1 leaves the group untouched; exactly 0 writes zeros (so a non-finite gradient can be cleared).
absl::Status CpuScaleGroups(const ChunkTable& table, absl::Span<const float> scales,
                            CpuExecutor* executor);

// The two above over several tables at once (a step's local workers, whose tables index the
// same groups): one parallel loop over all their tiles, so that workers of a few tiles each
// still use every thread, where a loop per table would use as many threads as its own tiles
// allow, one table after another. Table t's sums and flags go to sum_of_squares[t] and
// non_finite[t] (each as large as its table's groups): the same bits as CpuGroupSumSquares.
absl::Status CpuGroupSumSquaresOfTables(absl::Span<const ChunkTable* const> tables,
                                        absl::Span<const absl::Span<double>> sum_of_squares,
                                        absl::Span<const absl::Span<uint32_t>> non_finite,
                                        CpuExecutor* executor);
absl::Status CpuScaleGroupsOfTables(absl::Span<const ChunkTable* const> tables,
                                    absl::Span<const float> scales, CpuExecutor* executor);

}  // namespace gstab
