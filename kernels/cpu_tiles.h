// Per-tile CPU loops, compiled once per instruction set (generic, and AVX2 on x86-64) from the
// same source, kernels/cpu_tiles_impl.inc. Every variant performs the same IEEE operations per
// lane in the same order, so all produce identical bits; the fastest one the host supports is
// picked once at start-up.
#pragma once

#include "kernels/chunk_table.h"

namespace gstab {

struct CpuTileFunctions {
  TilePartial (*sum_of_squares)(const Chunk& chunk, const Tile& tile);
  void (*scale)(const Chunk& chunk, const Tile& tile, float scale);
  const char* isa;
};

// The variant for this host (AVX2 where the CPU has it).
const CpuTileFunctions& BestCpuTileFunctions();

namespace cpu_tiles_generic {
TilePartial SumOfSquares(const Chunk& chunk, const Tile& tile);
void Scale(const Chunk& chunk, const Tile& tile, float scale);
}  // namespace cpu_tiles_generic

namespace cpu_tiles_avx2 {
TilePartial SumOfSquares(const Chunk& chunk, const Tile& tile);
void Scale(const Chunk& chunk, const Tile& tile, float scale);
}  // namespace cpu_tiles_avx2

}  // namespace gstab
