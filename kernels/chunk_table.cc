#include "kernels/chunk_table.h"

#include <limits>

#include "absl/strings/str_cat.h"

namespace gstab {

absl::StatusOr<ChunkTable> ChunkTable::Create(std::vector<Chunk> chunks, uint32_t num_groups,
                                              int64_t tile_elements) {
  if (tile_elements <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tile size must be positive, got ", tile_elements));
  }
  if (chunks.size() > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError("too many chunks for one table");
  }
  ChunkTable table;
  table.num_groups_ = num_groups;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const Chunk& c = chunks[i];
    if (!IsValidDType(static_cast<uint32_t>(c.dtype))) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk ", i, ": unknown dtype ", static_cast<uint32_t>(c.dtype)));
    }
    if (c.group >= num_groups) {
      return absl::InvalidArgumentError(absl::StrCat("chunk ", i, ": norm group ", c.group,
                                                     " is out of range (", num_groups, " groups)"));
    }
    if (c.numel < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk ", i, ": negative element count ", c.numel));
    }
    if (c.numel > 0 && c.data == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk ", i, ": null data with ", c.numel, " elements"));
    }
    const auto address = reinterpret_cast<uintptr_t>(c.data);
    if (address % ElementSize(c.dtype) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chunk ", i, ": address is not aligned to its ", DTypeName(c.dtype), " elements"));
    }
    if (c.numel > std::numeric_limits<int64_t>::max() / 4) {
      return absl::InvalidArgumentError(absl::StrCat("chunk ", i, ": size overflows"));
    }
    const int64_t bytes = c.numel * static_cast<int64_t>(ElementSize(c.dtype));
    if (table.total_bytes_ > std::numeric_limits<int64_t>::max() - bytes) {
      return absl::InvalidArgumentError(absl::StrCat("chunk ", i, ": size overflows"));
    }
    table.total_bytes_ += bytes;
    for (int64_t begin = 0; begin < c.numel; begin += tile_elements) {
      const int64_t count = c.numel - begin < tile_elements ? c.numel - begin : tile_elements;
      table.tiles_.push_back(Tile{static_cast<uint32_t>(i), begin, count});
    }
  }
  table.chunks_ = std::move(chunks);
  return table;
}

}  // namespace gstab
