// The multi-tensor CUDA kernels: per-group sum of squares with a non-finite flag (one block per
// tile, then one block per group over its tiles in table order: two-stage and deterministic,
// no floating-point atomics), and the in-place per-group scale. 16-byte vector loads and stores
// where the data is aligned; scalar head and tail otherwise.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"

namespace gstab {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct Io;
template <>
struct Io<float> {
  __device__ static float Load(float x) { return x; }
  __device__ static float Store(float x) { return x; }
};
template <>
struct Io<__nv_bfloat16> {
  __device__ static float Load(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 Store(float x) { return __float2bfloat16_rn(x); }
};
template <>
struct Io<__half> {
  __device__ static float Load(__half x) { return __half2float(x); }
  __device__ static __half Store(float x) { return __float2half_rn(x); }
};

// Splits [0, count) of p into a scalar head up to 16-byte alignment, 16-byte vectors, and a
// scalar tail; calls scalar(i) for this thread's share of the head and tail, and vector(i, raw)
// with the 16 bytes at p + i for its share of the vectors, in increasing i (so sums keep one
// order, whatever kLoads). Loads are issued kLoads at a time, all before their vector() calls
// (a vector() that stores to p stores after them): enough bytes in flight keep the memory busy
// when a tile's blocks are all the GPU has to run (a 64 MB gradient is 256 to 512 tiles, under
// four blocks per SM).
template <int kLoads, typename T, typename Scalar, typename Vector>
__device__ void ForEachElement(const T* p, int64_t count, Scalar scalar, Vector vector) {
  constexpr int64_t kVec = 16 / sizeof(T);
  const auto misalign = reinterpret_cast<uintptr_t>(p) % 16;
  int64_t head = misalign == 0 ? 0 : static_cast<int64_t>((16 - misalign) / sizeof(T));
  if (head > count || misalign % sizeof(T) != 0) head = count;
  for (int64_t i = threadIdx.x; i < head; i += blockDim.x) scalar(i);
  const int64_t vectors = (count - head) / kVec;
  const uint4* v = reinterpret_cast<const uint4*>(p + head);
  const int64_t stride = blockDim.x;
  int64_t j = threadIdx.x;
  for (; j + (kLoads - 1) * stride < vectors; j += kLoads * stride) {
    uint4 raw[kLoads];
#pragma unroll
    for (int u = 0; u < kLoads; ++u) raw[u] = v[j + u * stride];
#pragma unroll
    for (int u = 0; u < kLoads; ++u) vector(head + (j + u * stride) * kVec, raw[u]);
  }
  for (; j < vectors; j += stride) vector(head + j * kVec, v[j]);
  for (int64_t i = head + vectors * kVec + threadIdx.x; i < count; i += blockDim.x) scalar(i);
}

// Whether the voided word (may be null) is set, one answer for the whole block: gstabd may write
// it (another stream) while a kernel runs, and threads that answered differently would part at
// the block's barriers. Every thread of the block calls this.
__device__ bool BlockSeesVoided(const uint32_t* voided) {
  __shared__ uint32_t seen;
  if (threadIdx.x == 0) {
    seen = voided == nullptr ? 0u : *reinterpret_cast<const volatile uint32_t*>(voided);
  }
  __syncthreads();
  return seen != 0;
}

// Sum over the block in a fixed order; the result is valid in thread 0.
__device__ double BlockSum(double v) {
  __shared__ double warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
  __syncthreads();
  double total = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  }
  return total;
}

template <int kLoads, typename T>
__device__ void SumTile(const void* data, const Tile& tile, float* acc, int* bad) {
  const T* p = static_cast<const T*>(data) + tile.begin;
  auto one = [&](float x) {
    *acc += x * x;
    *bad |= !isfinite(x);
  };
  ForEachElement<kLoads>(
      p, tile.count, [&](int64_t i) { one(Io<T>::Load(p[i])); },
      [&](int64_t, uint4 raw) {
        const T* e = reinterpret_cast<const T*>(&raw);
        for (int k = 0; k < static_cast<int>(16 / sizeof(T)); ++k) one(Io<T>::Load(e[k]));
      });
}

// This thread's share of the tile (the same elements as SumTile's) summed in fp64.
template <typename T>
__device__ void SumTileWide(const void* data, const Tile& tile, double* acc) {
  const T* p = static_cast<const T*>(data) + tile.begin;
  auto one = [&](double x) { *acc += x * x; };
  ForEachElement<1>(
      p, tile.count, [&](int64_t i) { one(Io<T>::Load(p[i])); },
      [&](int64_t, uint4 raw) {
        const T* e = reinterpret_cast<const T*>(&raw);
        for (int k = 0; k < static_cast<int>(16 / sizeof(T)); ++k) one(Io<T>::Load(e[k]));
      });
}

template <int kLoads>
__global__ void __launch_bounds__(kThreads)
    SumSquaresTiles(const DeviceChunk* chunks, const Tile* tiles, TilePartial* partials,
                    const uint32_t* voided) {
  if (BlockSeesVoided(voided)) {
    if (threadIdx.x == 0) partials[blockIdx.x] = TilePartial{0.0, 0u};
    return;
  }
  const Tile tile = tiles[blockIdx.x];
  const DeviceChunk chunk = chunks[tile.chunk];
  float acc = 0.0f;  // fp32 within a thread: at most tile/kThreads (256) terms
  int bad = 0;
  switch (static_cast<DType>(chunk.dtype)) {
    case DType::kFloat32:
      SumTile<kLoads, float>(chunk.data, tile, &acc, &bad);
      break;
    case DType::kBFloat16:
      SumTile<kLoads, __nv_bfloat16>(chunk.data, tile, &acc, &bad);
      break;
    case DType::kFloat16:
      SumTile<kLoads, __half>(chunk.data, tile, &acc, &bad);
      break;
  }
  double own = acc;
  if (!isfinite(acc) && !bad) {
    // Huge finite elements (beyond about 1e18) overflowed this thread's fp32 sum: its share
    // again in fp64, which no finite element can overflow. Rare; one load at a time.
    own = 0.0;
    switch (static_cast<DType>(chunk.dtype)) {
      case DType::kFloat32:
        SumTileWide<float>(chunk.data, tile, &own);
        break;
      case DType::kBFloat16:
        SumTileWide<__nv_bfloat16>(chunk.data, tile, &own);
        break;
      case DType::kFloat16:
        SumTileWide<__half>(chunk.data, tile, &own);
        break;
    }
  }
  const int any_bad = __syncthreads_or(bad);
  const double sum = BlockSum(own);
  if (threadIdx.x == 0) partials[blockIdx.x] = TilePartial{sum, static_cast<uint32_t>(any_bad)};
}

// Reads the voided word once for the whole step, after every tile's block has finished (a tile
// that saw it set was earlier, so this read sees it too), and marks every group's flag with the
// answer: kStepVoided or 0. ReduceGroups's blocks go by these marks, so that the word set while
// they run cannot leave some groups summed and others voided. One block.
__global__ void __launch_bounds__(kThreads)
    MarkVoided(const uint32_t* voided, uint32_t num_groups, uint32_t* non_finite) {
  const uint32_t mark = BlockSeesVoided(voided) ? kStepVoided : 0u;
  for (uint32_t g = threadIdx.x; g < num_groups; g += blockDim.x) non_finite[g] = mark;
}

// `marked`: non_finite holds MarkVoided's marks (else the step is not voidable).
__global__ void __launch_bounds__(kThreads)
    ReduceGroups(const uint32_t* offsets, const uint32_t* group_tiles, const TilePartial* partials,
                 double* sums, uint32_t* non_finite, bool marked) {
  const uint32_t g = blockIdx.x;
  if (marked && non_finite[g] == kStepVoided) {  // the same answer for every thread
    if (threadIdx.x == 0) sums[g] = 0.0;
    return;
  }
  double acc = 0;
  int bad = 0;
  for (uint32_t i = offsets[g] + threadIdx.x; i < offsets[g + 1]; i += blockDim.x) {
    const TilePartial p = partials[group_tiles[i]];
    acc += p.sum_of_squares;
    bad |= p.non_finite != 0;
  }
  const int any_bad = __syncthreads_or(bad);
  const double sum = BlockSum(acc);
  if (threadIdx.x == 0) {
    sums[g] = sum;
    non_finite[g] = static_cast<uint32_t>(any_bad);
  }
}

template <int kLoads, typename T>
__device__ void ScaleTile(void* data, const Tile& tile, float s) {
  T* p = static_cast<T*>(data) + tile.begin;
  if (s == 0.0f) {  // zeros whatever was there, non-finite values included: nothing to read
    ForEachElement<kLoads>(
        p, tile.count, [&](int64_t i) { p[i] = Io<T>::Store(0.0f); },
        [&](int64_t i, uint4) { *reinterpret_cast<uint4*>(p + i) = make_uint4(0, 0, 0, 0); });
    return;
  }
  ForEachElement<kLoads>(
      p, tile.count, [&](int64_t i) { p[i] = Io<T>::Store(Io<T>::Load(p[i]) * s); },
      [&](int64_t i, uint4 raw) {
        T* e = reinterpret_cast<T*>(&raw);
        for (int k = 0; k < static_cast<int>(16 / sizeof(T)); ++k) {
          e[k] = Io<T>::Store(Io<T>::Load(e[k]) * s);
        }
        *reinterpret_cast<uint4*>(p + i) = raw;
      });
}

template <int kLoads>
__global__ void __launch_bounds__(kThreads)
    ScaleTiles(const DeviceChunk* chunks, const Tile* tiles, const float* scales) {
  // The scales decide, once per step: a step voided by the time its sums were taken has scale 1
  // (nothing written); one voided later is scaled whole, as its statistics were updated.
  const Tile tile = tiles[blockIdx.x];
  const DeviceChunk chunk = chunks[tile.chunk];
  const float s = scales[chunk.group];
  if (s == 1.0f) return;  // nothing to write
  switch (static_cast<DType>(chunk.dtype)) {
    case DType::kFloat32:
      ScaleTile<kLoads, float>(chunk.data, tile, s);
      break;
    case DType::kBFloat16:
      ScaleTile<kLoads, __nv_bfloat16>(chunk.data, tile, s);
      break;
    case DType::kFloat16:
      ScaleTile<kLoads, __half>(chunk.data, tile, s);
      break;
  }
}

// The kernels for each supported kLoads (see ForEachElement).
struct Variant {
  int loads;
  decltype(&SumSquaresTiles<1>) sums;
  decltype(&ScaleTiles<1>) scale;
};
constexpr Variant kVariants[] = {{1, &SumSquaresTiles<1>, &ScaleTiles<1>},
                                 {2, &SumSquaresTiles<2>, &ScaleTiles<2>},
                                 {4, &SumSquaresTiles<4>, &ScaleTiles<4>},
                                 {8, &SumSquaresTiles<8>, &ScaleTiles<8>}};

absl::StatusOr<Variant> Find(int loads_in_flight) {
  for (const Variant& v : kVariants) {
    if (v.loads == loads_in_flight) return v;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(loads_in_flight, " loads in flight: 1, 2, 4 or 8 are built"));
}

}  // namespace

absl::Status PreloadCudaKernels() {
  std::vector<const void*> kernels = {reinterpret_cast<const void*>(&MarkVoided),
                                      reinterpret_cast<const void*>(&ReduceGroups)};
  for (const Variant& v : kVariants) {
    kernels.push_back(reinterpret_cast<const void*>(v.sums));
    kernels.push_back(reinterpret_cast<const void*>(v.scale));
  }
  if (absl::Status s = LoadKernels(kernels); !s.ok()) return s;
  if (absl::Status s = internal::PreloadRuleKernels(); !s.ok()) return s;
  return internal::PreloadCrossNodeKernels();
}

absl::Status LaunchGroupSumSquares(const DeviceChunkTable& table, TilePartial* d_partials,
                                   double* d_sums, uint32_t* d_non_finite, cudaStream_t stream,
                                   const uint32_t* d_voided, int loads_in_flight) {
  ClearStaleCudaError();
  absl::StatusOr<Variant> variant = Find(loads_in_flight);
  if (!variant.ok()) return variant.status();
  if (table.num_groups() == 0) return absl::OkStatus();
  if (table.num_tiles() > 0) {
    variant->sums<<<table.num_tiles(), kThreads, 0, stream>>>(table.d_chunks(), table.d_tiles(),
                                                              d_partials, d_voided);
    RETURN_IF_CUDA_ERROR(cudaGetLastError());
  }
  if (d_voided != nullptr) {
    MarkVoided<<<1, kThreads, 0, stream>>>(d_voided, table.num_groups(), d_non_finite);
    RETURN_IF_CUDA_ERROR(cudaGetLastError());
  }
  ReduceGroups<<<table.num_groups(), kThreads, 0, stream>>>(table.d_group_offsets(),
                                                            table.d_group_tiles(), d_partials,
                                                            d_sums, d_non_finite,
                                                            d_voided != nullptr);
  RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchScaleGroups(const DeviceChunkTable& table, const float* d_scales,
                               cudaStream_t stream, int loads_in_flight) {
  ClearStaleCudaError();
  absl::StatusOr<Variant> variant = Find(loads_in_flight);
  if (!variant.ok()) return variant.status();
  if (table.num_tiles() == 0) return absl::OkStatus();
  variant->scale<<<table.num_tiles(), kThreads, 0, stream>>>(table.d_chunks(), table.d_tiles(),
                                                             d_scales);
  RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace gstab
