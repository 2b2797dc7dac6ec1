// Validation of RegisterBuffers requests, and their mapping into memory. Everything a client
// sends is checked before any memory is touched: transports, dtypes, names, counts against the
// daemon's caps, offsets and sizes with overflow guards, tensors inside their buffer and not
// overlapping. Only then are the shared objects opened and their real sizes checked.
//
// Thread-safe (pure functions; the registry is thread-safe).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "gstab/v1/stabilizer.pb.h"
#include "kernels/dtype.h"
#include "server/gpu_pipeline.h"
#include "server/memory_claims.h"
#include "server/shm_mapping.h"

namespace gstab {

struct RegistrationCaps {
  uint32_t max_buffers = 1024;
  uint32_t max_tensors = 65536;
  uint64_t max_bytes = uint64_t{64} << 30;
  bool cuda_ipc = false;  // this daemon runs the CUDA pipeline
};

struct PlannedBuffer {
  bool cuda = false;        // cuda_ipc (else host_shm)
  std::string ipc_handle;   // cuda_ipc
  int device = 0;           // cuda_ipc: the worker's ordinal (gstabd's, once mapped)
  std::string device_uuid;  // cuda_ipc: 16 bytes, or empty
  std::string shm_name;
  uint64_t offset = 0;  // bytes into the shared object
  uint64_t size = 0;    // bytes
  DType dtype = DType::kFloat32;
};

struct PlannedTensor {
  std::string name;
  std::string group;  // resolved: the tensor's name when the request left it empty
  v1::Reduction reduction = v1::REDUCTION_SHARDED;
  uint32_t buffer = 0;
  uint64_t offset = 0;  // elements into the buffer
  uint64_t numel = 0;
};

struct RegistrationPlan {
  std::vector<PlannedBuffer> buffers;
  std::vector<PlannedTensor> tensors;
  uint64_t total_bytes = 0;  // bytes covered by tensors
  int cuda_device = -1;      // every buffer's device for cuda_ipc registrations, else -1
  // The largest host shared-memory object gstabd maps for it (it maps whole objects): the
  // daemon's cap on registered bytes, plus room for padding between tensors.
  uint64_t max_object_bytes = 0;
  // RegisterBuffersRequest.progress: the buffer whose object holds the word, and its byte
  // offset in that object.
  std::optional<std::pair<uint32_t, uint64_t>> progress;
};

// A plan whose shared objects are open: the mappings and each tensor's first element.
struct MappedRegistration {
  RegistrationPlan plan;
  std::vector<std::shared_ptr<void>> mappings;  // keep-alives, one per buffer
  std::vector<const ShmMapping*> host_objects;  // host_shm buffers' (kept alive by mappings)
  std::vector<void*> tensor_data;               // one per tensor (device pointers for cuda_ipc)
  uint64_t* progress = nullptr;                 // the plan's progress word, when it has one
  std::shared_ptr<void> claim;                  // ClaimMemory's
};

// The memory gstabd writes for `mapped`, in its address space (one address per object and IPC
// allocation): each tensor's, in order, then its progress word's when it has one.
std::vector<MemoryClaims::Extent> WrittenExtents(const MappedRegistration& mapped);
// What WrittenExtents' extent `i` is, for messages: "tensor 3 ('fc.weight')", or "its progress
// word".
std::string WrittenExtentName(const MappedRegistration& mapped, size_t i);

// Claims the memory gstabd writes for `mapped` (WrittenExtents) for job `job` in `claims`, for
// as long as the registration lives; FAILED_PRECONDITION when another job holds some of it.
absl::Status ClaimMemory(const std::string& job, MemoryClaims* claims, MappedRegistration* mapped);

// Marks `progress` (may be null) as RegisterBuffersRequest.progress says: scaling step `step`,
// or (`scaled`) done with it.
void MarkProgress(uint64_t* progress, uint64_t step, bool scaled);

// "sharded", "replicated" or "node-sharded", for messages.
const char* ReductionName(int reduction);

// INVALID_ARGUMENT (naming the buffer or tensor and the problem), RESOURCE_EXHAUSTED for caps,
// UNIMPLEMENTED for cuda_ipc buffers on a daemon without the CUDA backend.
absl::StatusOr<RegistrationPlan> ValidateRegistration(const v1::RegisterBuffersRequest& request,
                                                      const RegistrationCaps& caps);

// Opens every buffer through `registry` (host_shm) or `device` (cuda_ipc; may be null when
// the plan has no such buffer) and checks that offset + size fits inside it. Every host_shm
// object must belong to uid `owner` (PERMISSION_DENIED otherwise, and without an owner, as for
// a caller over TCP): gstabd opens objects on a worker's behalf, and must not open another
// user's for it.
absl::StatusOr<MappedRegistration> MapRegistration(RegistrationPlan plan, MappingRegistry* registry,
                                                   DeviceMemory* device = nullptr,
                                                   std::optional<uid_t> owner = std::nullopt);

// Tensor and group names: 1..256 characters of [A-Za-z0-9._/:-]; `what` names it in the error.
absl::Status ValidateTensorName(const std::string& what, const std::string& name);

// Job names: 1..128 characters of [A-Za-z0-9._-] (they name checkpoint files and metrics).
absl::Status ValidateJobName(const std::string& job);

}  // namespace gstab
