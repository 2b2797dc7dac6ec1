// CPU norm and scale throughput beside baselines measured in the same run: a streaming read for
// the norm, and for the in-place scale both a copy (memcpy, out of place) and an in-place
// rewrite of the same buffer (the scale's own traffic). Prints one row per (layout, dtype, size,
// threads) with GB/s and the ratio to the baseline; see bench/RESULTS.md for recorded figures.
// A row's kernels and baselines run interleaved, a round of each in turn, medians per kind.
//
// A second table: a step of several local workers, their tables one loop after another (as a
// step ran them) against one loop over all their tiles.
//
//   cpu_kernels_bench [--max_mb=1024] [--threads=N] [--workers_only]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu_kernels.h"

namespace gstab {
namespace {

using Clock = std::chrono::steady_clock;

// Median seconds of each of fns, run in rounds (each fn once per round, in turn) until at least
// 7 rounds and ~0.5 s have passed: a kernel and its baselines see the same drift of a shared
// machine, instead of one after the other.
std::vector<double> InterleavedMedianSeconds(const std::vector<std::function<void()>>& fns) {
  for (const auto& fn : fns) fn();  // warm-up: page faults, caches
  std::vector<std::vector<double>> times(fns.size());
  const auto start = Clock::now();
  size_t rounds = 0;
  while (rounds < 7 || (Clock::now() - start < std::chrono::milliseconds(500) && rounds < 1000)) {
    for (size_t i = 0; i < fns.size(); ++i) {
      const auto t0 = Clock::now();
      fns[i]();
      times[i].push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    ++rounds;
  }
  std::vector<double> medians;
  for (std::vector<double>& t : times) {
    std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
    medians.push_back(t[t.size() / 2]);
  }
  return medians;
}

// Streaming read: the fastest loop over the bytes that does nothing but read them (compiled for
// AVX2 too, chosen at run time as the kernels' tiles are: not an SSE2 loop against AVX2 ones).
__attribute__((target_clones("avx2", "default"))) uint64_t ReadAll(const void* data, size_t bytes) {
  const auto* p = static_cast<const uint64_t*>(data);
  const size_t n = bytes / 8;
  uint64_t acc[8] = {};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] ^= p[i + j];
  }
  for (; i < n; ++i) acc[0] ^= p[i];
  uint64_t r = 0;
  for (uint64_t a : acc) r ^= a;
  return r;
}

volatile uint64_t g_sink;
volatile uint64_t g_key = 0;  // 0, which the compiler cannot know: RewriteAll writes every word

// In place, read and written back: the scale's own traffic (one buffer, not memcpy's two), the
// baseline an in-place kernel can be held to at every size.
__attribute__((target_clones("avx2", "default"))) void RewriteAll(void* data, size_t bytes) {
  auto* p = static_cast<uint64_t*>(data);
  const size_t n = bytes / 8;
  const uint64_t k = g_key;
  for (size_t i = 0; i < n; ++i) p[i] ^= k;
}

// Splits `bytes` into tensors: one flat buffer, or the parameter shapes of a small
// LLaMA-style transformer (hidden 512, MLP 1376, vocabulary 32000) repeated to fill the size.
std::vector<int64_t> Layout(bool mix, int64_t numel) {
  if (!mix) return {numel};
  const int64_t h = 512, f = 1376, vocab = 32000;
  std::vector<int64_t> layer = {h, h * h, h * h, h * h, h * h, h, h * f, h * f, f * h};
  std::vector<int64_t> out = {vocab * h};
  int64_t used = vocab * h;
  for (size_t i = 0; used < numel; ++i) {
    const int64_t n = std::min(layer[i % layer.size()], numel - used);
    out.push_back(n);
    used += n;
  }
  if (used > numel) out[0] -= used - numel;  // vocabulary larger than the total: shrink it
  return out;
}

void Row(const char* layout, DType dtype, int64_t bytes, int threads, size_t tensors, double norm_s,
         double read_s, double scale_s, double copy_s, double rewrite_s) {
  const double gb = static_cast<double>(bytes) / 1e9;
  std::printf("%-6s %-8s %8.1f %3d %6zu | %7.2f %7.2f %5.2f | %7.2f %7.2f %5.2f | %7.2f %5.2f\n",
              layout, DTypeName(dtype), static_cast<double>(bytes) / (1 << 20), threads, tensors,
              gb / norm_s, gb / read_s, read_s / norm_s, gb / scale_s, gb / copy_s,
              copy_s / scale_s, gb / rewrite_s, rewrite_s / scale_s);
}

void Bench(bool mix, DType dtype, int64_t bytes, int threads) {
  const int64_t numel = bytes / static_cast<int64_t>(ElementSize(dtype));
  std::vector<unsigned char> grads(static_cast<size_t>(bytes)), other(static_cast<size_t>(bytes));
  for (int64_t i = 0; i < bytes; i += 2) {  // small finite values in every dtype
    grads[i] = static_cast<unsigned char>(i * 7);
    grads[i + 1] = 0x3c;
  }
  std::vector<Chunk> chunks;
  int64_t offset = 0;
  const std::vector<int64_t> sizes = Layout(mix, numel);
  for (size_t i = 0; i < sizes.size(); ++i) {
    chunks.push_back(Chunk{grads.data() + offset * ElementSize(dtype), sizes[i], dtype,
                           static_cast<uint32_t>(i % 4)});
    offset += sizes[i];
  }
  absl::StatusOr<ChunkTable> table = ChunkTable::Create(chunks, 4);
  if (!table.ok()) {
    std::fprintf(stderr, "%s\n", table.status().ToString().c_str());
    std::exit(1);
  }
  CpuExecutor executor(threads);
  std::vector<TilePartial> scratch(CpuSumSquaresScratchSize(*table));
  double sums[4];
  uint32_t flags[4];
  // Halving then doubling, alternately: exact in every dtype, and the values stay where they
  // are (a fixed factor would drive them into subnormals, which x86 handles slowly).
  const float halve[4] = {0.5f, 0.5f, 0.5f, 0.5f};
  const float twice[4] = {2.0f, 2.0f, 2.0f, 2.0f};
  int flip = 0;

  const auto norm = [&] {
    (void)CpuGroupSumSquares(*table, absl::MakeSpan(scratch), sums, flags, &executor);
  };
  const auto read = [&] {
    if (threads == 1) {
      g_sink = ReadAll(grads.data(), grads.size());
      return;
    }
    const int64_t per = bytes / threads;
    executor.ParallelFor(threads, threads, [&](int64_t t) {
      g_sink = ReadAll(grads.data() + t * per, static_cast<size_t>(per));
    });
  };
  const auto scale = [&] { (void)CpuScaleGroups(*table, (flip++ % 2) ? twice : halve, &executor); };
  const auto copy = [&] {
    const int64_t per = bytes / threads;
    executor.ParallelFor(threads, threads, [&](int64_t t) {
      std::memcpy(other.data() + t * per, grads.data() + t * per, static_cast<size_t>(per));
    });
  };
  const auto rewrite = [&] {
    const int64_t per = bytes / threads;
    executor.ParallelFor(threads, threads, [&](int64_t t) {
      RewriteAll(grads.data() + t * per, static_cast<size_t>(per));
    });
  };
  const std::vector<double> s = InterleavedMedianSeconds({norm, read, scale, copy, rewrite});
  const double norm_s = s[0], read_s = s[1], scale_s = s[2], copy_s = s[3], rewrite_s = s[4];
  Row(mix ? "mix" : "flat", dtype, bytes, threads, sizes.size(), norm_s, read_s, scale_s, copy_s,
      rewrite_s);
}

// A step of `workers` local workers of `mib` MiB of fp32 each (one tensor, 4 groups): their
// tables one loop after another, as a step ran them (each loop as many threads as its own
// tiles allow), against one loop over all their tiles (CpuGroupSumSquaresOfTables,
// CpuScaleGroupsOfTables), with the same executor.
void BenchWorkers(int workers, int64_t mib, int threads) {
  const int64_t numel = (mib << 20) / 4;
  std::vector<std::vector<float>> grads(workers, std::vector<float>(numel, 0.01f));
  std::vector<ChunkTable> tables;
  for (int w = 0; w < workers; ++w) {
    std::vector<Chunk> chunks;
    for (uint32_t g = 0; g < 4; ++g) {
      chunks.push_back(Chunk{grads[w].data() + g * (numel / 4), numel / 4, DType::kFloat32, g});
    }
    absl::StatusOr<ChunkTable> table = ChunkTable::Create(chunks, 4);
    if (!table.ok()) std::exit(1);
    tables.push_back(*std::move(table));
  }
  std::vector<const ChunkTable*> pointers;
  for (const ChunkTable& t : tables) pointers.push_back(&t);
  CpuExecutor executor(threads);
  std::vector<double> sums(4 * workers);
  std::vector<uint32_t> flags(4 * workers);
  std::vector<absl::Span<double>> sum_spans;
  std::vector<absl::Span<uint32_t>> flag_spans;
  for (int w = 0; w < workers; ++w) {
    sum_spans.push_back(absl::MakeSpan(sums).subspan(4 * w, 4));
    flag_spans.push_back(absl::MakeSpan(flags).subspan(4 * w, 4));
  }
  const float halve[4] = {0.5f, 0.5f, 0.5f, 0.5f};
  const float twice[4] = {2.0f, 2.0f, 2.0f, 2.0f};
  int flip = 0;
  const auto each = [&] {
    for (int w = 0; w < workers; ++w) {
      std::vector<TilePartial> scratch(CpuSumSquaresScratchSize(tables[w]));
      (void)CpuGroupSumSquares(tables[w], absl::MakeSpan(scratch), sum_spans[w], flag_spans[w],
                               &executor);
    }
    const float* scales = (flip++ % 2) ? twice : halve;
    for (int w = 0; w < workers; ++w) (void)CpuScaleGroups(tables[w], {scales, 4}, &executor);
  };
  const auto all = [&] {
    (void)CpuGroupSumSquaresOfTables(pointers, sum_spans, flag_spans, &executor);
    (void)CpuScaleGroupsOfTables(pointers, (flip++ % 2) ? twice : halve, &executor);
  };
  const std::vector<double> s = InterleavedMedianSeconds({each, all});
  const double each_s = s[0], all_s = s[1];
  std::printf("%7d %8lld %3d | %9.3f %9.3f %5.2f\n", workers, static_cast<long long>(mib), threads,
              each_s * 1e3, all_s * 1e3, each_s / all_s);
}

}  // namespace
}  // namespace gstab

int main(int argc, char** argv) {
  int64_t max_mb = 1024;
  int max_threads = static_cast<int>(std::thread::hardware_concurrency());
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--max_mb=", 0) == 0) max_mb = std::atoll(a.c_str() + 9);
    if (a.rfind("--threads=", 0) == 0) max_threads = std::atoi(a.c_str() + 10);
    if (a == "--workers_only") max_mb = 0;
  }
  std::printf("CPU kernels: GB/s of gradient bytes; ratio = baseline time / kernel time\n");
  std::printf("%-6s %-8s %8s %3s %6s | %7s %7s %5s | %7s %7s %5s | %7s %5s\n", "layout", "dtype",
              "MiB", "thr", "tensors", "norm", "read", "ratio", "scale", "copy", "ratio", "rewrite",
              "ratio");
  for (bool mix : {false, true}) {
    for (gstab::DType dtype :
         {gstab::DType::kFloat32, gstab::DType::kBFloat16, gstab::DType::kFloat16}) {
      for (int64_t mb = 1; mb <= max_mb; mb *= 4) {
        for (int threads = 1; threads <= max_threads; threads *= 2) {
          gstab::Bench(mix, dtype, mb << 20, threads);
        }
      }
    }
  }
  std::printf(
      "\nA step's local workers (fp32, sum and scale): a loop per worker's table, as "
      "a step ran them, against one loop over every worker's tiles; ms, ratio = per "
      "table / one loop\n");
  std::printf("%7s %8s %3s | %9s %9s %5s\n", "workers", "MiB each", "thr", "per table", "one loop",
              "ratio");
  for (int workers : {1, 2, 4, 8}) {
    for (int64_t mib : {2, 8}) gstab::BenchWorkers(workers, mib, max_threads);
  }
  return 0;
}
