#include "server/cuda/cuda_backend.h"

#include "server/cuda/cuda_ipc.h"
#include "server/cuda/cuda_stepper.h"
#include "server/cuda/nccl_comm.h"

namespace gstab {
namespace {

class CudaDeviceMemory final : public DeviceMemory {
 public:
  absl::StatusOr<std::pair<std::shared_ptr<void>, char*>> Open(const std::string& handle,
                                                               int device, uint64_t offset,
                                                               uint64_t bytes) override {
    absl::StatusOr<std::shared_ptr<IpcRegion>> region =
        registry_.Open(handle, device, offset, bytes);
    if (!region.ok()) return region.status();
    char* base = static_cast<char*>((*region)->base) + offset;
    return std::make_pair(std::shared_ptr<void>(*std::move(region)), base);
  }

  absl::StatusOr<std::pair<std::shared_ptr<void>, void*>> OpenEvent(const std::string& handle,
                                                                    int device) override {
    absl::StatusOr<std::unique_ptr<IpcEvent>> event = IpcEvent::Open(handle, device);
    if (!event.ok()) return event.status();
    void* raw = (*event)->get();
    return std::make_pair(std::shared_ptr<void>(std::shared_ptr<IpcEvent>(*std::move(event))), raw);
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
