// What gstabd's periodic malloc_trim(0) (after each checkpoint, server/server.cc) costs: a heap
// grown by a burst of requests and mostly freed, as a burst of large RPCs leaves it, is
// trimmed (the pages go back to the system), then trimmed again with nothing to give back (the
// steady state, paid at every checkpoint). Beside each: the time the burst's own free() calls
// took, in the same run. Prints one line per heap size:
//   malloc_trim_bench [--threads=8]
#include <malloc.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

long RssMib() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * sysconf(_SC_PAGESIZE) >> 20;
}

// Each thread allocates `bytes` in blocks of 1 to 64 KiB (served by malloc's arenas, not by
// mmap), touching them, then frees all but every 64th: a fragmented residue stays.
void Burst(size_t bytes, unsigned seed, std::vector<void*>* kept, double* free_seconds) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<size_t> size(1 << 10, 64 << 10);
  std::vector<void*> blocks;
  for (size_t total = 0; total < bytes;) {
    const size_t n = size(rng);
    void* p = std::malloc(n);
    std::memset(p, 1, n);
    blocks.push_back(p);
    total += n;
  }
  const auto start = std::chrono::steady_clock::now();
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (i % 64 == 0) {
      kept->push_back(blocks[i]);
    } else {
      std::free(blocks[i]);
    }
  }
  *free_seconds = Seconds(start);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 8;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) threads = std::atoi(argv[i] + 10);
  }
  std::printf("%10s %9s %9s %12s %12s %14s\n", "heap MiB", "RSS MiB", "trimmed", "trim ms",
              "again ms", "burst free ms");
  for (size_t mib : {64, 256, 1024}) {
    std::vector<std::vector<void*>> kept(threads);
    std::vector<double> free_seconds(threads);
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back(Burst, (mib << 20) / threads, static_cast<unsigned>(t), &kept[t],
                           &free_seconds[t]);
    }
    for (std::thread& w : workers) w.join();
    double freeing = 0;
    for (double s : free_seconds) freeing = std::max(freeing, s);
    const long before = RssMib();
    auto start = std::chrono::steady_clock::now();
    malloc_trim(0);
    const double trim = Seconds(start);
    const long after = RssMib();
    start = std::chrono::steady_clock::now();
    malloc_trim(0);
    const double again = Seconds(start);
    std::printf("%10zu %9ld %9ld %12.2f %12.3f %14.2f\n", mib, before, before - after, trim * 1e3,
                again * 1e3, freeing * 1e3);
    for (auto& k : kept) {
      for (void* p : k) std::free(p);
    }
    malloc_trim(0);
  }
  return 0;
}
