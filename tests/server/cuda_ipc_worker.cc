// The worker side of cuda_ipc_test: owns gradients in its own GPU memory, exports their
// handle, signals through the pipeline's ready and done words, and checks what gstabd's CUDA
// pipeline did to the gradients.
//   cuda_ipc_worker FLAG_FILE    (prints "HANDLES mem", then waits for FLAG_FILE to hold
//                                 "RESULTS_HANDLE READY_OFFSET DONE_OFFSET", then prints
//                                 "RESULT ...")
#include <cuda_runtime.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "core/rule.h"
#include "kernels/cuda/driver_api.h"
#include "kernels/half.h"

namespace {

int Fail(const char* what, cudaError_t e) {
  std::printf("RESULT cuda-error %s: %s\n", what, cudaGetErrorString(e));
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  // Layout (bytes): fp32 x1000 at 0 and bf16 x777 at 4096 form group 0; fp32 x70001 at 8192
  // is group 1.
  constexpr size_t kBytes = 8192 + 70001 * 4;
  std::vector<unsigned char> host(kBytes, 0);
  auto f32 = [&](size_t off, int i) { return reinterpret_cast<float*>(host.data() + off) + i; };
  auto b16 = [&](int i) { return reinterpret_cast<uint16_t*>(host.data() + 4096) + i; };
  for (int i = 0; i < 1000; ++i) *f32(0, i) = std::sin(0.1f * static_cast<float>(i));
  for (int i = 0; i < 777; ++i)
    *b16(i) = gstab::FloatToBFloat16(std::cos(0.2f * static_cast<float>(i)));
  for (int i = 0; i < 70001; ++i) *f32(8192, i) = 1e-3f * static_cast<float>(i % 101);
  void* d = nullptr;
  cudaStream_t stream;
  cudaError_t e;
  if ((e = cudaSetDevice(0)) != cudaSuccess) return Fail("device", e);
  if ((e = cudaMalloc(&d, kBytes)) != cudaSuccess) return Fail("malloc", e);
  cudaStreamCreate(&stream);
  cudaIpcMemHandle_t mh;
  if ((e = cudaIpcGetMemHandle(&mh, d)) != cudaSuccess) return Fail("mem handle", e);
  std::printf("HANDLES %s\n", absl::BytesToHexString(
                                  absl::string_view(reinterpret_cast<const char*>(&mh), sizeof mh))
                                  .c_str());
  std::fflush(stdout);

  std::string results_hex;
  uint64_t ready_offset = 0, done_offset = 0;
  for (int i = 0; i < 3000; ++i) {
    std::ifstream flag(argv[1]);
    if (flag >> results_hex >> ready_offset >> done_offset) break;
    usleep(10000);
  }
  const std::string results_bytes = absl::HexStringToBytes(results_hex);
  cudaIpcMemHandle_t results_h;
  if (results_bytes.size() != sizeof results_h) {
    std::printf("RESULT bad flag file\n");
    return 1;
  }
  std::memcpy(&results_h, results_bytes.data(), sizeof results_h);
  void* results = nullptr;
  if ((e = cudaIpcOpenMemHandle(&results, results_h, cudaIpcMemLazyEnablePeerAccess)) !=
      cudaSuccess) {
    return Fail("results handle", e);
  }
  // The pipeline's step is already queued behind the ready word: the gradients arrive, then
  // `ready` (value 1, as the test enqueued it).
  cudaMemcpyAsync(d, host.data(), kBytes, cudaMemcpyHostToDevice, stream);
  auto* ready_word = reinterpret_cast<uint32_t*>(static_cast<char*>(results) + ready_offset);
  if (absl::Status s = gstab::StreamWriteValue(stream, ready_word, 1); !s.ok()) {
    std::printf("RESULT ready write failed: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  // Stream-ordered: wait for the daemon's `done`, then read the gradients back.
  auto* done_word = reinterpret_cast<uint32_t*>(static_cast<char*>(results) + done_offset);
  if (absl::Status s = gstab::StreamWaitValue(stream, done_word, 1); !s.ok()) {
    std::printf("RESULT done wait failed: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  std::vector<unsigned char> out(kBytes);
  cudaMemcpyAsync(out.data(), d, kBytes, cudaMemcpyDeviceToHost, stream);
  if ((e = cudaStreamSynchronize(stream)) != cudaSuccess) return Fail("sync", e);

  // Reference: the rule on the CPU sums of the same values.
  double sums[2] = {0, 0};
  for (int i = 0; i < 1000; ++i) sums[0] += double(*f32(0, i)) * *f32(0, i);
  for (int i = 0; i < 777; ++i) {
    const double x = gstab::BFloat16ToFloat(*b16(i));
    sums[0] += x * x;
  }
  for (int i = 0; i < 70001; ++i) sums[1] += double(*f32(8192, i)) * *f32(8192, i);
  gstab::RuleParams params;
  float scale[2];
  for (int g = 0; g < 2; ++g) {
    gstab::GroupStats s;
    scale[g] = static_cast<float>(gstab::ApplyRule(params, &s, sums[g], false).scale);
  }
  double worst = 0;
  auto check = [&](float got, float before, int g) {
    const double want = double(before) * scale[g];
    if (want != 0) worst = std::max(worst, std::abs(got / want - 1));
  };
  for (int i = 0; i < 1000; ++i) {
    check(reinterpret_cast<float*>(out.data())[i], *f32(0, i), 0);
  }
  for (int i = 0; i < 777; ++i) {
    check(gstab::BFloat16ToFloat(reinterpret_cast<uint16_t*>(out.data() + 4096)[i]),
          gstab::BFloat16ToFloat(*b16(i)), 0);
  }
  for (int i = 0; i < 70001; ++i) {
    check(reinterpret_cast<float*>(out.data() + 8192)[i], *f32(8192, i), 1);
  }
  // bf16 rounding allows 2^-8 relative; fp32 values only the scale's last bits.
  std::printf(worst < 1e-2 ? "RESULT ok %.3g\n" : "RESULT mismatch %.3g\n", worst);
  return worst < 1e-2 ? 0 : 1;
}
