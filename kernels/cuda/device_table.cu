#include <utility>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_table.h"

namespace gstab {
namespace {

template <typename T>
absl::Status Copy(T** d_out, const std::vector<T>& host, cudaStream_t stream) {
  if (host.empty()) return absl::OkStatus();
  RETURN_IF_CUDA_ERROR(cudaMalloc(reinterpret_cast<void**>(d_out), host.size() * sizeof(T)));
  RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(*d_out, host.data(), host.size() * sizeof(T),
                                       cudaMemcpyHostToDevice, stream));
  return absl::OkStatus();
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
  DeviceChunkTable d;
  d.num_tiles_ = static_cast<uint32_t>(table.tiles().size());
  d.num_groups_ = table.num_groups();
  if (absl::Status s = Copy(&d.d_chunks_, chunks, stream); !s.ok()) return s;
  if (absl::Status s = Copy(&d.d_tiles_, table.tiles(), stream); !s.ok()) return s;
  if (absl::Status s = Copy(&d.d_group_offsets_, offsets, stream); !s.ok()) return s;
  if (absl::Status s = Copy(&d.d_group_tiles_, group_tiles, stream); !s.ok()) return s;
  // The host vectors die here: wait for the copies that read them.
  RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream));
  return d;
}

DeviceChunkTable::DeviceChunkTable(DeviceChunkTable&& o) noexcept { *this = std::move(o); }

DeviceChunkTable& DeviceChunkTable::operator=(DeviceChunkTable&& o) noexcept {
  if (this != &o) {
    Free();
    num_tiles_ = o.num_tiles_;
    num_groups_ = o.num_groups_;
    d_chunks_ = std::exchange(o.d_chunks_, nullptr);
    d_tiles_ = std::exchange(o.d_tiles_, nullptr);
    d_group_offsets_ = std::exchange(o.d_group_offsets_, nullptr);
    d_group_tiles_ = std::exchange(o.d_group_tiles_, nullptr);
  }
  return *this;
}

DeviceChunkTable::~DeviceChunkTable() { Free(); }

void DeviceChunkTable::Free() {
  cudaFree(d_chunks_);
  cudaFree(d_tiles_);
  cudaFree(d_group_offsets_);
  cudaFree(d_group_tiles_);
  d_chunks_ = nullptr;
  d_tiles_ = nullptr;
  d_group_offsets_ = nullptr;
  d_group_tiles_ = nullptr;
}

}  // namespace gstab
