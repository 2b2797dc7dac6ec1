#include <cstring>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_table.h"

namespace gstab {
namespace {

// Where `bytes` go in the one allocation: at the next multiple of 256 bytes (cudaMalloc's own
// alignment), so every array is aligned for any of its loads.
size_t Place(size_t bytes, size_t* total) {
  const size_t at = *total;
  *total += (bytes + 255) / 256 * 256;
  return at;
}

template <typename T>
void Stage(const std::vector<T>& host, size_t at, std::vector<char>* staging) {
  if (!host.empty()) std::memcpy(staging->data() + at, host.data(), host.size() * sizeof(T));
}

}  // namespace

absl::StatusOr<DeviceChunkTable> DeviceChunkTable::Upload(const ChunkTable& table,
                                                          cudaStream_t stream) {
  std::vector<DeviceChunk> chunks;
  for (const Chunk& c : table.chunks()) {
    chunks.push_back(DeviceChunk{c.data, c.numel, static_cast<uint32_t>(c.dtype), c.group});
  }
  // Tiles grouped by norm group, each group's tiles in table order.
  std::vector<uint32_t> offsets(table.num_groups() + 1, 0);
  for (const Tile& t : table.tiles()) ++offsets[table.chunks()[t.chunk].group + 1];
  for (uint32_t g = 0; g < table.num_groups(); ++g) offsets[g + 1] += offsets[g];
  std::vector<uint32_t> group_tiles(table.tiles().size());
  std::vector<uint32_t> cursor(offsets.begin(), offsets.end() - 1);
  for (uint32_t i = 0; i < table.tiles().size(); ++i) {
    group_tiles[cursor[table.chunks()[table.tiles()[i].chunk].group]++] = i;
  }
  // One allocation and one copy: a failed allocation leaves nothing to free (a free may wait
  // for the whole device, and this runs under the job's lock).
  size_t total = 0;
  const size_t at_chunks = Place(chunks.size() * sizeof(DeviceChunk), &total);
  const size_t at_tiles = Place(table.tiles().size() * sizeof(Tile), &total);
  const size_t at_offsets = Place(offsets.size() * sizeof(uint32_t), &total);
  const size_t at_group_tiles = Place(group_tiles.size() * sizeof(uint32_t), &total);
  std::vector<char> staging(total);
  Stage(chunks, at_chunks, &staging);
  Stage(table.tiles(), at_tiles, &staging);
  Stage(offsets, at_offsets, &staging);
  Stage(group_tiles, at_group_tiles, &staging);
  char* base = nullptr;
  RETURN_IF_CUDA_ERROR(cudaMalloc(reinterpret_cast<void**>(&base), total));
  DeviceChunkTable d;
  d.base_ = base;
  d.num_tiles_ = static_cast<uint32_t>(table.tiles().size());
  d.num_groups_ = table.num_groups();
  d.d_chunks_ = reinterpret_cast<DeviceChunk*>(base + at_chunks);
  d.d_tiles_ = reinterpret_cast<Tile*>(base + at_tiles);
  d.d_group_offsets_ = reinterpret_cast<uint32_t*>(base + at_offsets);
  d.d_group_tiles_ = reinterpret_cast<uint32_t*>(base + at_group_tiles);
  // A copy into fresh memory fails only on a broken context, where a free no longer waits.
  RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(base, staging.data(), total, cudaMemcpyHostToDevice, stream));
  // `staging` dies here: wait for the copy that reads it.
  RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream));
  return d;
}

DeviceChunkTable::DeviceChunkTable(DeviceChunkTable&& o) noexcept { *this = std::move(o); }

DeviceChunkTable& DeviceChunkTable::operator=(DeviceChunkTable&& o) noexcept {
  if (this != &o) {
    Free();
    num_tiles_ = o.num_tiles_;
    num_groups_ = o.num_groups_;
    base_ = std::exchange(o.base_, nullptr);
    d_chunks_ = std::exchange(o.d_chunks_, nullptr);
    d_tiles_ = std::exchange(o.d_tiles_, nullptr);
    d_group_offsets_ = std::exchange(o.d_group_offsets_, nullptr);
    d_group_tiles_ = std::exchange(o.d_group_tiles_, nullptr);
  }
  return *this;
}

DeviceChunkTable::~DeviceChunkTable() { Free(); }

void DeviceChunkTable::Free() {
  // Not for a table moved from (destroyed on RPC threads): whether cudaFree(nullptr) waits for
  // the device, as a real free may, is CUDA's to say.
  if (base_ != nullptr) cudaFree(base_);
  base_ = nullptr;
  d_chunks_ = nullptr;
  d_tiles_ = nullptr;
  d_group_offsets_ = nullptr;
  d_group_tiles_ = nullptr;
}

}  // namespace gstab
