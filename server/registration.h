// Validation of RegisterBuffers requests, and their mapping into memory. Everything a client
// sends is checked before any memory is touched: transports, dtypes, names, counts against the
// daemon's caps, offsets and sizes with overflow guards, tensors inside their buffer and not
// overlapping. Only then are the shared objects opened and their real sizes checked.
//
// Thread-safe (pure functions; the registry is thread-safe).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gstab/v1/stabilizer.pb.h"
#include "kernels/dtype.h"
#include "server/shm_mapping.h"

namespace gstab {

struct RegistrationCaps {
  uint32_t max_buffers = 1024;
  uint32_t max_tensors = 65536;
  uint64_t max_bytes = uint64_t{64} << 30;
};

struct PlannedBuffer {
  std::string shm_name;
  uint64_t offset = 0;  // bytes into the shared object
  uint64_t size = 0;    // bytes
  DType dtype = DType::kFloat32;
};

struct PlannedTensor {
  std::string name;
  std::string group;  // resolved: the tensor's name when the request left it empty
  bool replicated = false;
  uint32_t buffer = 0;
  uint64_t offset = 0;  // elements into the buffer
  uint64_t numel = 0;
};

struct RegistrationPlan {
  std::vector<PlannedBuffer> buffers;
  std::vector<PlannedTensor> tensors;
  uint64_t total_bytes = 0;  // bytes covered by tensors
};

// A plan whose shared objects are open: the mappings and each tensor's first element.
struct MappedRegistration {
  RegistrationPlan plan;
  std::vector<std::shared_ptr<ShmMapping>> mappings;  // one per buffer
  std::vector<void*> tensor_data;                     // one per tensor
};

// INVALID_ARGUMENT (naming the buffer or tensor and the problem), RESOURCE_EXHAUSTED for caps,
// UNIMPLEMENTED for cuda_ipc buffers on a daemon without the CUDA backend.
absl::StatusOr<RegistrationPlan> ValidateRegistration(const v1::RegisterBuffersRequest& request,
                                                      const RegistrationCaps& caps);

// Opens every buffer's shared object through `registry` and checks that offset + size fits
// inside it.
absl::StatusOr<MappedRegistration> MapRegistration(RegistrationPlan plan,
                                                   MappingRegistry* registry);

// Job names: 1..128 characters of [A-Za-z0-9._-] (they name checkpoint files and metrics).
absl::Status ValidateJobName(const std::string& job);

}  // namespace gstab
