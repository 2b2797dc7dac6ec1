// The chunk table: the list of gradient slices (chunks) the kernels run over, each belonging to
// one norm group, split into fixed-size tiles. Tiles are the unit of work and of the partial
// sums, so the reduction order depends only on the table, never on the thread count: the same
// gradients in the same table (the same tensors, registered alike) give the same bits.
//
// Immutable after Create(); safe to share across threads. Does not own the gradient memory.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/dtype.h"

namespace gstab {

struct Chunk {
  void* data = nullptr;  // first element; may be null only when numel == 0
  int64_t numel = 0;
  DType dtype = DType::kFloat32;
  uint32_t group = 0;  // norm group index, < num_groups
  // Where its memory's loss is counted (may be null: never lost): nonzero once a touch of it
  // failed and its pages were replaced by private ones (server/shm_faults.h). The scale kernels
  // pass such a chunk's tiles over: each page they wrote would be gstabd's own memory.
  const std::atomic<uint32_t>* lost = nullptr;
};

struct Tile {
  uint32_t chunk = 0;
  int64_t begin = 0;  // element offset inside the chunk
  int64_t count = 0;
};

// Per-tile result of the sum-of-squares kernel (caller-owned scratch, one per tile).
struct TilePartial {
  double sum_of_squares = 0.0;
  uint32_t non_finite = 0;
};

class ChunkTable {
 public:
  // Elements per tile: 256 KiB of fp32, large enough to amortise scheduling, small enough to
  // spread a single large tensor over all threads.
  static constexpr int64_t kDefaultTileElements = int64_t{1} << 16;

  // Validates the chunks (group in range, numel >= 0, data set when numel > 0, valid dtype,
  // element alignment) and builds the tiles. INVALID_ARGUMENT names the chunk and the problem.
  static absl::StatusOr<ChunkTable> Create(std::vector<Chunk> chunks, uint32_t num_groups,
                                           int64_t tile_elements = kDefaultTileElements);

  ChunkTable() = default;  // an empty table: no chunks, no groups

  const std::vector<Chunk>& chunks() const { return chunks_; }
  const std::vector<Tile>& tiles() const { return tiles_; }
  uint32_t num_groups() const { return num_groups_; }
  int64_t total_bytes() const { return total_bytes_; }

 private:
  std::vector<Chunk> chunks_;
  std::vector<Tile> tiles_;
  uint32_t num_groups_ = 0;
  int64_t total_bytes_ = 0;
};

}  // namespace gstab
