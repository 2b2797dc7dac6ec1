// A worker's CUDA gradients for gstabd: tensors anywhere in device memory (the caller's own
// allocations: any framework's pointer, size and device), and the two interprocess events of
// the stream-ordered handshake.
//
//   auto grads = CudaGradients::Create(/*device=*/0);
//   (*grads)->AddTensor("fc1.weight", ptr, numel, DType::kBFloat16);
//   client->RegisterBuffers((*grads)->RegistrationRequest());
//   // every step, after backward on `stream`:
//   auto r = (*grads)->Step(client.get(), step, stream);   // stream then waits on `done`
//
// Neither host blocks on the GPU: Step records `ready` on the stream, asks gstabd to enqueue its
// work behind it, and makes the stream wait on `done`. Not thread-safe.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "client_lib/client.h"
#include "kernels/dtype.h"

namespace gstab {

class CudaGradients {
 public:
  static absl::StatusOr<std::unique_ptr<CudaGradients>> Create(int device);
  ~CudaGradients();
  CudaGradients(const CudaGradients&) = delete;
  CudaGradients& operator=(const CudaGradients&) = delete;

  // `ptr` is device memory on this object's device holding `numel` elements. INVALID_ARGUMENT
  // when it is not inside a CUDA allocation.
  absl::Status AddTensor(std::string name, void* ptr, uint64_t numel, DType dtype,
                         std::string group = "");
  v1::RegisterBuffersRequest RegistrationRequest() const { return request_; }
  absl::StatusOr<v1::StepResponse> Step(Client* client, uint64_t step, cudaStream_t stream);

 private:
  explicit CudaGradients(int device) : device_(device) {}
  const int device_;
  cudaEvent_t ready_ = nullptr;
  cudaEvent_t done_ = nullptr;
  v1::RegisterBuffersRequest request_;
};

}  // namespace gstab
