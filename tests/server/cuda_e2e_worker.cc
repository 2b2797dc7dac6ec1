// The worker of cuda_e2e_test: a process with gradients in its own GPU memory that attaches to
// a real gstabd (--backend=cuda) through the client library, steps three times with the
// stream-ordered handshake, and checks every value against the CPU rule.
//   cuda_e2e_worker SOCKET JOB        (prints "RESULT ok ..." or "RESULT ...")
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "client_lib/cuda_gradients.h"
#include "core/rule.h"
#include "kernels/half.h"

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  cudaSetDevice(0);
  constexpr size_t kBlock = 1 << 20;
  char* block = nullptr;
  if (cudaMalloc(&block, kBlock) != cudaSuccess) {
    std::printf("RESULT no device memory\n");
    return 1;
  }
  float* w = reinterpret_cast<float*>(block + 256);         // inside the block, as a caching
  uint16_t* b = reinterpret_cast<uint16_t*>(block + 8192);  // allocator would hand out
  auto grads = gstab::CudaGradients::Create(0);
  auto client = gstab::Client::Connect(argv[1]);
  if (!grads.ok() || !client.ok()) {
    std::printf("RESULT setup failed\n");
    return 1;
  }
  for (absl::Status s : {(*grads)->AddTensor("w", w, 1000, gstab::DType::kFloat32, "g"),
                         (*grads)->AddTensor("b", b, 777, gstab::DType::kBFloat16, "g")}) {
    if (!s.ok()) {
      std::printf("RESULT add tensor: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  gstab::AttachOptions o;
  o.job = argv[2];
  if (absl::Status s = (*client)->Attach(o); !s.ok()) {
    std::printf("RESULT attach: %s\n", s.ToString().c_str());
    return 1;
  }
  if (absl::Status s = (*client)->RegisterBuffers((*grads)->RegistrationRequest()); !s.ok()) {
    std::printf("RESULT register: %s\n", s.ToString().c_str());
    return 1;
  }
  cudaStream_t stream;
  cudaStreamCreate(&stream);
  gstab::RuleParams params;
  gstab::GroupStats reference;
  double worst = 0;
  std::vector<float> hw(1000), out_w(1000);
  std::vector<uint16_t> hb(777), out_b(777);
  for (uint64_t step = 1; step <= 3; ++step) {
    const float f = step == 3 ? 1e4f : 1.0f;
    for (int i = 0; i < 1000; ++i) hw[i] = f * std::sin(0.01f * static_cast<float>(i * step));
    for (int i = 0; i < 777; ++i) {
      hb[i] = gstab::FloatToBFloat16(f * std::cos(0.02f * static_cast<float>(i + step)));
    }
    cudaMemcpyAsync(w, hw.data(), 4000, cudaMemcpyHostToDevice, stream);
    cudaMemcpyAsync(b, hb.data(), 777 * 2, cudaMemcpyHostToDevice, stream);
    absl::StatusOr<gstab::v1::StepResponse> r = (*grads)->Step(client->get(), step, stream);
    if (!r.ok()) {
      std::printf("RESULT step %llu: %s\n", static_cast<unsigned long long>(step),
                  r.status().ToString().c_str());
      return 1;
    }
    cudaMemcpyAsync(out_w.data(), w, 4000, cudaMemcpyDeviceToHost, stream);  // after `done`
    cudaMemcpyAsync(out_b.data(), b, 777 * 2, cudaMemcpyDeviceToHost, stream);
    cudaStreamSynchronize(stream);
    double sum = 0;
    for (float x : hw) sum += double(x) * x;
    for (uint16_t x : hb) sum += double(gstab::BFloat16ToFloat(x)) * gstab::BFloat16ToFloat(x);
    const double scale = gstab::ApplyRule(params, &reference, sum, false).scale;
    for (int i = 0; i < 1000; ++i) {
      const double want = hw[i] * scale;
      if (want != 0) worst = std::max(worst, std::abs(out_w[i] / want - 1));
    }
    for (int i = 0; i < 777; ++i) {
      const double want = gstab::BFloat16ToFloat(hb[i]) * scale;
      if (want != 0) {
        worst = std::max(worst, std::abs(gstab::BFloat16ToFloat(out_b[i]) / want - 1));
      }
    }
  }
  auto stats = (*client)->GetStats();
  const unsigned long long accepted = stats.ok() ? stats->groups(0).accepted_steps() : 0;
  const bool ok = worst < 1e-2 && accepted == 3;
  std::printf("RESULT %s worst=%.3g accepted=%llu\n", ok ? "ok" : "mismatch", worst, accepted);
  return ok ? 0 : 1;
}
