// GPU kernel bandwidth beside a device-to-device copy of the same bytes, measured in the same
// run with CUDA events: the norm kernel (one read; also beside a streaming read of the same
// bytes, read_baseline.cu), the scale kernel (read + write), for bf16
// and fp32 gradients from 1 MiB to 4 GiB, as one flat buffer and as the parameter shapes of a
// 1.34B-parameter LLaMA-style model (hidden 2048, MLP 5461, 24 layers, vocabulary 32000) scaled
// to each size. Every timed run starts from a cold L2 holding no dirty lines, the baselines' as
// the kernels'.
// The main columns use the kernels' default loads in flight per thread; the last columns give
// the norm's and the scale's ratio for each built setting (1, 2, 4, 8), to choose the default.
//
//   cuda_kernels_bench [--max_mib=4096]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "bench/read_baseline.h"
#include "kernels/cuda/cuda_kernels.h"

namespace gstab {
namespace {

constexpr int kLoadSettings[] = {1, 2, 4, 8};

void Check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

// Tensor sizes (elements) of the 1.34B model in order, each scaled by total / 1.34B (at least
// 1), so that every size has the model's mix of 219 tensors, back to back as in a flat bucket.
std::vector<int64_t> ModelLayout(int64_t total) {
  const int64_t h = 2048, f = 5461, vocab = 32000;
  std::vector<int64_t> model = {vocab * h};
  for (int layer = 0; layer < 24; ++layer) {
    for (int64_t n : {h, h * h, h * h, h * h, h * h, h, h * f, h * f, f * h}) model.push_back(n);
  }
  model.push_back(h);
  model.push_back(vocab * h);
  int64_t model_total = 0;
  for (int64_t n : model) model_total += n;
  const double r = static_cast<double>(total) / static_cast<double>(model_total);
  std::vector<int64_t> out;
  int64_t used = 0;
  for (int64_t n : model) {
    out.push_back(std::max<int64_t>(1, std::llround(static_cast<double>(n) * r)));
    used += out.back();
  }
  out.front() += total - used;  // rounding's remainder to the embedding, the largest
  return out;
}

// Bigger than any GPU's L2 (H100 50 MB, H200 60 MB): written, then read, before each timed run,
// so that no run reads what the one before left in L2, nor pays for writing back the lines the
// flush's write left dirty (the read evicts them before the run).
constexpr size_t kFlushBytes = size_t{256} << 20;
void* g_flush = nullptr;
unsigned int* g_sink = nullptr;  // the read baseline's device word

// Median milliseconds of `fn` over 20 runs after 3 warm-ups, each from a cold, clean L2.
template <typename Fn>
float Time(Fn fn) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 3; ++i) fn();
  std::vector<float> ms;
  for (int i = 0; i < 20; ++i) {
    Check(cudaMemsetAsync(g_flush, i, kFlushBytes), "L2 flush");
    Check(bench::LaunchReadAll(g_flush, kFlushBytes, g_sink, nullptr), "L2 flush read");
    cudaEventRecord(a);
    fn();
    cudaEventRecord(b);
    Check(cudaEventSynchronize(b), "event");
    float t;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void CheckLaunch(const absl::Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "launch: %s\n", std::string(s.message()).c_str());
    std::exit(1);
  }
}

void Bench(bool mix, DType dtype, int64_t bytes, void* d_grads, void* d_other) {
  const int64_t es = static_cast<int64_t>(ElementSize(dtype));
  const std::vector<int64_t> sizes =
      mix ? ModelLayout(bytes / es) : std::vector<int64_t>{bytes / es};
  std::vector<Chunk> chunks;
  int64_t offset = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    chunks.push_back(Chunk{static_cast<char*>(d_grads) + offset * es, sizes[i], dtype,
                           static_cast<uint32_t>(i)});  // per-tensor groups, like the reference
    offset += sizes[i];
  }
  ChunkTable table = *ChunkTable::Create(chunks, static_cast<uint32_t>(chunks.size()));
  auto dt = DeviceChunkTable::Upload(table, nullptr);
  if (!dt.ok()) std::exit(1);
  TilePartial* d_partials;
  double* d_sums;
  uint32_t* d_flags;
  float* d_scales;  // 0.5 for every group, then 2 for every group: the runs take turns
  Check(cudaMalloc(&d_partials, table.tiles().size() * sizeof(TilePartial)), "malloc");
  Check(cudaMalloc(&d_sums, chunks.size() * sizeof(double)), "malloc");
  Check(cudaMalloc(&d_flags, chunks.size() * sizeof(uint32_t)), "malloc");
  Check(cudaMalloc(&d_scales, 2 * chunks.size() * sizeof(float)), "malloc");
  std::vector<float> scales(chunks.size(), 0.5f);
  scales.resize(2 * chunks.size(), 2.0f);
  cudaMemcpy(d_scales, scales.data(), scales.size() * sizeof(float), cudaMemcpyHostToDevice);
  size_t scale_runs = 0;  // halved, then doubled back: the data stays as it was

  const float copy =
      Time([&] { cudaMemcpyAsync(d_other, d_grads, bytes, cudaMemcpyDeviceToDevice); });
  const float read = Time([&] {
    Check(bench::LaunchReadAll(d_grads, static_cast<size_t>(bytes), g_sink, nullptr), "read");
  });
  auto norm_ms = [&](int loads) {
    return Time([&] {
      CheckLaunch(LaunchGroupSumSquares(*dt, d_partials, d_sums, d_flags, nullptr, nullptr, loads));
    });
  };
  auto scale_ms = [&](int loads) {
    return Time([&] {
      const float* s = d_scales + (scale_runs++ % 2) * chunks.size();
      CheckLaunch(LaunchScaleGroups(*dt, s, nullptr, loads));
    });
  };
  const float norm = norm_ms(kDefaultLoadsInFlight);
  const float scale = scale_ms(kDefaultLoadsInFlight);
  const double gb = static_cast<double>(bytes) / 1e9;
  const double copy_bw = 2 * gb / (copy / 1e3);  // read + write
  const double read_bw = gb / (read / 1e3);
  const double norm_bw = gb / (norm / 1e3);
  const double scale_bw = 2 * gb / (scale / 1e3);
  std::printf(
      "%-5s %-8s %8.0f %6zu | %8.3f %8.0f | %8.3f %8.0f | %8.3f %8.0f %5.2f %5.2f | %8.3f %8.0f "
      "%5.2f |",
      mix ? "model" : "flat", DTypeName(dtype), static_cast<double>(bytes) / (1 << 20),
      sizes.size(), copy, copy_bw, read, read_bw, norm, norm_bw, norm_bw / copy_bw,
      norm_bw / read_bw, scale, scale_bw, scale_bw / copy_bw);
  for (int loads : kLoadSettings) std::printf(" %4.2f", gb / (norm_ms(loads) / 1e3) / copy_bw);
  std::printf(" |");
  for (int loads : kLoadSettings) {
    std::printf(" %4.2f", 2 * gb / (scale_ms(loads) / 1e3) / copy_bw);
  }
  std::printf("\n");
  Check(cudaDeviceSynchronize(), "kernels");
  cudaFree(d_partials);
  cudaFree(d_sums);
  cudaFree(d_flags);
  cudaFree(d_scales);
}

}  // namespace
}  // namespace gstab

int main(int argc, char** argv) {
  int64_t max_mib = 4096;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--max_mib=", 0) == 0) max_mib = std::atoll(a.c_str() + 10);
  }
  cudaDeviceProp prop;
  gstab::Check(cudaGetDeviceProperties(&prop, 0), "device");
  std::printf(
      "%s; GB/s moved; ratio = kernel bandwidth / copy bandwidth (and the norm's / the read's, "
      "\"/read\"); ms = median of 20\n",
      prop.name);
  std::printf(
      "%-5s %-8s %8s %6s | %8s %8s | %8s %8s | %8s %8s %5s %5s | %8s %8s %5s | %-19s | %s\n",
      "shape", "dtype", "MiB", "tensors", "copy ms", "GB/s", "read ms", "GB/s", "norm ms", "GB/s",
      "ratio", "/read", "scale ms", "GB/s", "ratio", "norm ratio @1/2/4/8", "scale ratio @1/2/4/8");
  void *d_grads, *d_other;
  const size_t max_bytes = static_cast<size_t>(max_mib) << 20;
  gstab::Check(cudaMalloc(&d_grads, max_bytes), "malloc gradients");
  gstab::Check(cudaMalloc(&d_other, max_bytes), "malloc copy target");
  gstab::Check(cudaMalloc(&gstab::g_flush, gstab::kFlushBytes), "malloc L2 flush");
  gstab::Check(cudaMalloc(&gstab::g_sink, sizeof(unsigned int)), "malloc read sink");
  cudaMemset(d_grads, 0x3c, max_bytes);  // finite in every dtype
  for (bool mix : {false, true}) {
    for (gstab::DType dtype : {gstab::DType::kBFloat16, gstab::DType::kFloat32}) {
      for (int64_t mib = 1; mib <= max_mib; mib *= 4) {
        gstab::Bench(mix, dtype, mib << 20, d_grads, d_other);
      }
    }
  }
  return 0;
}
