// What gstabd's CUDA backend assumes of the CUDA driver, checked on the GPU at hand, one line
// each ("PASS", "FAIL", or "INFO" for a figure), so that a failure elsewhere on a new driver
// can be told from a gstab bug at a glance:
//  - the bytes of cudaIpcGetMemHandle are the same each call for one allocation (the client
//    groups tensors into buffers by them);
//  - a second open of an opened handle gives the same pointer (the registry's refcounting);
//  - cuMemGetAddressRange works on an IPC-opened pointer, also for allocations under 2 MiB;
//  - while a stream waits on a word no one has written yet (a step whose backward pass still
//    runs), the calls gstabd makes on the request path do not wait for the device;
//  - a cudaFree that waits for that stream does not stop the write that releases it (gstabd's
//    release of a gone worker's steps, while its reaper frees);
//  - an IPC mapping stays usable after the exporting process exits (a worker killed
//    mid-step).
// A forked child exports (a process cannot open its own handles). Exit status 0 when every
// check passed, 1 when one failed; where there is no GPU, 0 after saying so, unless
// GSTAB_REQUIRE_CUDA=1.
//
//   cuda_driver_test
#include <cuda_runtime.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include "kernels/cuda/driver_api.h"

namespace {

int failures = 0;

void Report(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
  std::fflush(stdout);
  if (!ok) ++failures;
}

bool Ok(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  Report(false, std::string(what) + ": " + cudaGetErrorString(e));
  (void)cudaGetLastError();
  return false;
}

// Runs `call` on a thread of its own (device 0) and reports whether it returned within
// `limit_s`. One that did not is left running: the process ends with _exit.
bool ReturnsWithin(const std::string& what, const std::function<void()>& call,
                   double limit_s = 3.0) {
  auto done = std::make_shared<std::atomic<bool>>(false);
  const auto start = std::chrono::steady_clock::now();
  std::thread t([call, done] {
    cudaSetDevice(0);
    call();
    *done = true;
  });
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  while (!*done && elapsed() < limit_s) usleep(1000);
  const bool returned = *done;
  char line[160];
  std::snprintf(line, sizeof line, "%s %s (%.4f s)", what.c_str(),
                returned ? "returns while another stream waits" : "waits for the held stream",
                elapsed());
  Report(returned, line);
  if (returned) {
    t.join();
  } else {
    t.detach();
  }
  return returned;
}

constexpr size_t kSmall = 288196;  // under 2 MiB: the driver may carve it from a larger block
constexpr size_t kBig = size_t{2} << 20;

// The exporter: three allocations' handles (the second allocation's twice) to `to_parent`, then
// waits for a byte from `from_parent` and exits without freeing anything.
[[noreturn]] void Exporter(int to_parent, int from_parent) {
  cudaIpcMemHandle_t h[4] = {};
  void *small = nullptr, *big = nullptr, *other = nullptr;
  if (cudaSetDevice(0) == cudaSuccess && cudaMalloc(&small, kSmall) == cudaSuccess &&
      cudaMalloc(&big, kBig) == cudaSuccess && cudaMalloc(&other, kBig) == cudaSuccess &&
      cudaMemset(big, 0, kBig) == cudaSuccess && cudaDeviceSynchronize() == cudaSuccess) {
    cudaIpcGetMemHandle(&h[0], small);
    cudaIpcGetMemHandle(&h[1], big);
    cudaIpcGetMemHandle(&h[2], big);
    cudaIpcGetMemHandle(&h[3], other);
  }
  if (write(to_parent, h, sizeof h) != static_cast<ssize_t>(sizeof h)) _exit(1);
  char c;
  (void)read(from_parent, &c, 1);
  _exit(0);
}

int Probe() {
  int to_parent[2], from_parent[2];
  if (pipe(to_parent) != 0 || pipe(from_parent) != 0) return 2;
  const pid_t child = fork();  // before this process touches CUDA (a child of one that has
                               // cannot use it)
  if (child == 0) Exporter(to_parent[1], from_parent[0]);
  cudaIpcMemHandle_t h[4];
  if (read(to_parent[0], h, sizeof h) != static_cast<ssize_t>(sizeof h)) return 2;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    const char* required = std::getenv("GSTAB_REQUIRE_CUDA");
    const bool fail = required != nullptr && std::strcmp(required, "1") == 0;
    if (fail) {
      Report(false, "no CUDA device, and GSTAB_REQUIRE_CUDA=1 says there is one");
    } else {
      std::printf("SKIP no CUDA device\n");
    }
    (void)write(from_parent[1], "x", 1);
    waitpid(child, nullptr, 0);
    return fail ? 1 : 0;
  }
  Report(std::memcmp(&h[1], &h[2], sizeof h[1]) == 0,
         "cudaIpcGetMemHandle gives the same bytes twice for one allocation");

  if (!Ok(cudaSetDevice(0), "cudaSetDevice")) return 1;
  void *small = nullptr, *big = nullptr, *again = nullptr, *other = nullptr;
  if (!Ok(cudaIpcOpenMemHandle(&small, h[0], cudaIpcMemLazyEnablePeerAccess), "open small") ||
      !Ok(cudaIpcOpenMemHandle(&big, h[1], cudaIpcMemLazyEnablePeerAccess), "open big")) {
    return 1;
  }
  if (Ok(cudaIpcOpenMemHandle(&again, h[1], cudaIpcMemLazyEnablePeerAccess), "open again")) {
    Report(again == big, "a second open of an opened handle gives the same pointer");
    Ok(cudaIpcCloseMemHandle(again), "close the second open");
  }
  for (const auto& [p, name] : {std::pair<void*, const char*>{small, "a 288196-byte allocation"},
                                {big, "a 2 MiB allocation"}}) {
    auto range = gstab::CudaAllocationRange(p);
    Report(range.ok() && static_cast<char*>(range->first) <= static_cast<char*>(p),
           std::string("cuMemGetAddressRange on an IPC-opened pointer of ") + name + ": " +
               (range.ok()
                    ? std::to_string(range->second) + " bytes from " +
                          std::to_string(static_cast<char*>(p) - static_cast<char*>(range->first)) +
                          " before the pointer"
                    : range.status().ToString()));
  }

  // A stream held at a word, as gstabd's stream at a worker's ready word.
  uint32_t* word = nullptr;
  cudaStream_t held, other_stream;
  if (!Ok(cudaMalloc(&word, 4), "cudaMalloc") || !Ok(cudaMemset(word, 0, 4), "cudaMemset") ||
      !Ok(cudaStreamCreateWithFlags(&held, cudaStreamNonBlocking), "stream") ||
      !Ok(cudaStreamCreateWithFlags(&other_stream, cudaStreamNonBlocking), "stream") ||
      !Ok(cudaDeviceSynchronize(), "sync")) {
    return 1;
  }
  if (absl::Status s = gstab::StreamWaitValue(held, word, 1); !s.ok()) {
    Report(false, s.ToString());
    return 1;
  }
  Ok(cudaMemsetAsync(big, 0, 256, held), "memset behind the wait");
  usleep(100000);
  const cudaError_t query = cudaStreamQuery(held);
  (void)cudaGetLastError();
  Report(query == cudaErrorNotReady, "a stream waiting on an unwritten word stays held");

  void *device = nullptr, *pinned = nullptr, *mapped = nullptr, *scratch = nullptr;
  ReturnsWithin("cudaMalloc", [&] { Ok(cudaMalloc(&device, 4 << 20), "cudaMalloc"); });
  ReturnsWithin("cudaMallocHost", [&] { Ok(cudaMallocHost(&pinned, 4096), "cudaMallocHost"); });
  ReturnsWithin("cudaHostAlloc(mapped)",
                [&] { Ok(cudaHostAlloc(&mapped, 64, cudaHostAllocMapped), "cudaHostAlloc"); });
  ReturnsWithin("cudaIpcGetMemHandle", [&] {
    cudaIpcMemHandle_t mine;
    Ok(cudaIpcGetMemHandle(&mine, device), "cudaIpcGetMemHandle");
  });
  ReturnsWithin("cudaIpcOpenMemHandle", [&] {
    Ok(cudaIpcOpenMemHandle(&other, h[3], cudaIpcMemLazyEnablePeerAccess), "open");
  });
  ReturnsWithin("work and a copy to pinned memory on another stream", [&] {
    Ok(cudaMalloc(&scratch, 4096), "cudaMalloc");
    Ok(cudaMemsetAsync(scratch, 1, 4096, other_stream), "memset");
    Ok(cudaMemcpyAsync(pinned, scratch, 4096, cudaMemcpyDeviceToHost, other_stream), "copy");
    Ok(cudaStreamSynchronize(other_stream), "sync");
  });

  // A free that waits for the held stream, then the write that releases it.
  std::atomic<bool> freed{false};
  std::thread free_thread([&] {
    cudaSetDevice(0);
    Ok(cudaFree(device), "cudaFree");
    freed = true;
  });
  usleep(300000);
  std::printf("INFO cudaFree with a held stream %s after 0.3 s\n",
              freed ? "returned" : "still waits");
  cudaStream_t release;
  Ok(cudaStreamCreateWithFlags(&release, cudaStreamNonBlocking), "stream");
  if (!ReturnsWithin(
          "the releasing cuStreamWriteValue32 while a cudaFree waits",
          [&] {
            if (absl::Status s = gstab::StreamWriteValue(release, word, 1); !s.ok()) {
              Report(false, s.ToString());
            }
          },
          5.0)) {
    std::printf("FAIL deadlock: the free holds what the release needs\n");
    std::fflush(stdout);
    _exit(1);
  }
  free_thread.join();
  Report(Ok(cudaStreamSynchronize(held), "the held stream") && freed,
         "the held stream and the free finish once released");

  // The exporter exits; its memory stays usable through this process's mapping.
  (void)write(from_parent[1], "x", 1);
  int status = 0;
  waitpid(child, &status, 0);
  const cudaError_t after = cudaMemsetAsync(big, 0, kBig, other_stream);
  const cudaError_t synced = cudaStreamSynchronize(other_stream);
  Report(after == cudaSuccess && synced == cudaSuccess,
         std::string("writing an IPC mapping after its exporter exited: ") +
             cudaGetErrorString(after != cudaSuccess ? after : synced));
  cudaIpcCloseMemHandle(big);
  cudaIpcCloseMemHandle(small);
  if (other != nullptr) cudaIpcCloseMemHandle(other);
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main() {
  const int rc = Probe();
  std::printf("%d check(s) failed\n", failures);
  std::fflush(stdout);
  _exit(rc);  // a call still blocked on a thread must not hold the exit up
}
