#include "server/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "server/cuda/cuda_ipc.h"
#include "server/cuda/cuda_stepper.h"
#include "server/cuda/device_reaper.h"
#include "server/cuda/nccl_comm.h"

namespace gstab {
namespace {

class CudaDeviceMemory final : public DeviceMemory {
 public:
  // gstabd is stopping: let the releases deferred so far finish before the process exits.
  ~CudaDeviceMemory() override { FlushDeviceReleases(absl::Seconds(5)); }
  void AwaitClosedMappings(int device, absl::Duration timeout) override {
    if (!registry_.AwaitClosed(device, timeout)) {
      LOG(WARNING) << "gave up waiting " << timeout << " for released IPC mappings on GPU "
                   << device << " to close: the GPU is busy";
    }
  }
  absl::StatusOr<std::pair<std::shared_ptr<void>, char*>> Open(const std::string& handle,
                                                               int device, uint64_t offset,
                                                               uint64_t bytes) override {
    absl::StatusOr<std::shared_ptr<IpcRegion>> region =
        registry_.Open(handle, device, offset, bytes);
    if (!region.ok()) return region.status();
    char* base = static_cast<char*>((*region)->base) + offset;
    return std::make_pair(std::shared_ptr<void>(*std::move(region)), base);
  }

  absl::StatusOr<int> ResolveDevice(const std::string& uuid, int ordinal) override {
    if (uuid.empty()) return ordinal;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
    for (int d = 0; d < count; ++d) {
      cudaDeviceProp prop;
      if (cudaGetDeviceProperties(&prop, d) == cudaSuccess &&
          std::memcmp(prop.uuid.bytes, uuid.data(), sizeof prop.uuid.bytes) == 0) {
        return d;
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat("the worker's GPU (ordinal ", ordinal, " there, UUID ",
                     absl::BytesToHexString(uuid), ") is not among the ", count,
                     " GPUs gstabd sees: run gstabd with every GPU of the node visible"));
  }

 private:
  CudaIpcRegistry registry_;
};

}  // namespace

std::unique_ptr<DeviceMemory> MakeCudaDeviceMemory() {
  return std::make_unique<CudaDeviceMemory>();
}

GpuPipelineFactory MakeCudaPipelineFactory() {
  return [](int device, const ChunkTable& table, const std::vector<GroupStats>& stats,
            const GpuJobSpec& spec) -> absl::StatusOr<std::unique_ptr<GpuPipeline>> {
    absl::StatusOr<std::unique_ptr<CudaStepper>> s =
        CudaStepper::Create(device, table, stats, spec);
    if (!s.ok()) return s.status();
    return std::unique_ptr<GpuPipeline>(*std::move(s));
  };
}

absl::StatusOr<std::string> NewNcclUniqueId() { return NcclComm::NewUniqueId(); }

}  // namespace gstab
