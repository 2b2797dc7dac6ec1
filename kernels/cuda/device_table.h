// A chunk table in device memory, for the CUDA kernels: chunks, tiles (the same tiles as the
// host table, so both backends reduce in the same units), and per group the list of its tiles
// in table order (the fixed order of the final reduction).
//
// Owns its device arrays (one allocation); move-only. Not thread-safe.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/statusor.h"
#include "kernels/chunk_table.h"

namespace gstab {

struct DeviceChunk {
  void* data;  // device pointer
  int64_t numel;
  uint32_t dtype;  // DType
  uint32_t group;
};

class DeviceChunkTable {
 public:
  // Copies `table` (whose chunk data are device pointers) to the device on `stream`.
  static absl::StatusOr<DeviceChunkTable> Upload(const ChunkTable& table, cudaStream_t stream);
  DeviceChunkTable(DeviceChunkTable&& other) noexcept;
  DeviceChunkTable& operator=(DeviceChunkTable&& other) noexcept;
  DeviceChunkTable(const DeviceChunkTable&) = delete;
  DeviceChunkTable& operator=(const DeviceChunkTable&) = delete;
  ~DeviceChunkTable();

  uint32_t num_tiles() const { return num_tiles_; }
  uint32_t num_groups() const { return num_groups_; }
  const DeviceChunk* d_chunks() const { return d_chunks_; }
  const Tile* d_tiles() const { return d_tiles_; }
  const uint32_t* d_group_offsets() const { return d_group_offsets_; }  // num_groups + 1
  const uint32_t* d_group_tiles() const { return d_group_tiles_; }      // num_tiles

 private:
  DeviceChunkTable() = default;
  void Free();

  uint32_t num_tiles_ = 0;
  uint32_t num_groups_ = 0;
  char* base_ = nullptr;  // the one allocation; the arrays below point into it
  DeviceChunk* d_chunks_ = nullptr;
  Tile* d_tiles_ = nullptr;
  uint32_t* d_group_offsets_ = nullptr;
  uint32_t* d_group_tiles_ = nullptr;
};

}  // namespace gstab
