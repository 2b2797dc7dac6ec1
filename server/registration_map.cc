// Mapping a validated registration (registration.h): its buffers opened through the daemon's
// MappingRegistry (shared memory) or DeviceMemory (CUDA IPC), its tensors' memory claimed, and
// the arena's progress word.
#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/step_progress.h"
#include "server/registration.h"

namespace gstab {

void MarkProgress(uint64_t* progress, uint64_t step, bool scaled) {
  // Ordered with the scaling's own stores: the mark before them is seen before any of them, and
  // the one after them after all of them.
  if (progress == nullptr) return;
  __atomic_store_n(progress, scaled ? ScaledMark(step) : ScalingMark(step), __ATOMIC_SEQ_CST);
}

std::vector<MemoryClaims::Extent> WrittenExtents(const MappedRegistration& mapped) {
  std::vector<MemoryClaims::Extent> extents;
  for (size_t i = 0; i < mapped.plan.tensors.size(); ++i) {
    const PlannedTensor& t = mapped.plan.tensors[i];
    const auto begin = reinterpret_cast<uintptr_t>(mapped.tensor_data[i]);
    extents.push_back({begin, begin + t.numel * ElementSize(mapped.plan.buffers[t.buffer].dtype)});
  }
  // gstabd writes the progress word at every step: in another rank's or job's tensor it would
  // overwrite their gradients.
  if (mapped.progress != nullptr) {
    const auto word = reinterpret_cast<uintptr_t>(mapped.progress);
    extents.push_back({word, word + sizeof(uint64_t)});
  }
  return extents;
}

std::string WrittenExtentName(const MappedRegistration& mapped, size_t i) {
  if (i >= mapped.plan.tensors.size()) return "its progress word";
  return absl::StrCat("tensor ", i, " ('", mapped.plan.tensors[i].name, "')");
}

absl::Status ClaimMemory(const std::string& job, MemoryClaims* claims, MappedRegistration* mapped) {
  const std::vector<MemoryClaims::Extent> extents = WrittenExtents(*mapped);
  // Apart from each other by address too: the plan compared offsets within each buffer's own
  // object, and two buffers may name one memory (two CUDA IPC handles of one allocation).
  std::vector<size_t> order(extents.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return extents[a].begin < extents[b].begin; });
  for (size_t k = 1; k < order.size(); ++k) {
    if (extents[order[k - 1]].end > extents[order[k]].begin) {
      return absl::InvalidArgumentError(absl::StrCat(
          WrittenExtentName(*mapped, order[k]), " shares memory with ",
          WrittenExtentName(*mapped, order[k - 1]),
          " of the same registration (two buffers naming one memory): gstabd would count and "
          "scale it twice"));
    }
  }
  absl::StatusOr<std::shared_ptr<void>> claim =
      claims->Claim(job, extents, [mapped](size_t i) { return WrittenExtentName(*mapped, i); });
  if (!claim.ok()) return claim.status();
  mapped->claim = *std::move(claim);
  return absl::OkStatus();
}

absl::StatusOr<MappedRegistration> MapRegistration(RegistrationPlan plan, MappingRegistry* registry,
                                                   DeviceMemory* device,
                                                   std::optional<uid_t> owner) {
  MappedRegistration out;
  if (plan.cuda_device >= 0) {
    if (device == nullptr) return absl::UnimplementedError("this daemon has no CUDA pipeline");
    // The worker's ordinal becomes gstabd's: the same GPU, found by its UUID.
    absl::StatusOr<int> ordinal =
        device->ResolveDevice(plan.buffers[0].device_uuid, plan.cuda_device);
    if (!ordinal.ok()) return ordinal.status();
    plan.cuda_device = *ordinal;
    for (PlannedBuffer& b : plan.buffers) b.device = *ordinal;
    std::vector<char*> bases;
    for (size_t i = 0; i < plan.buffers.size(); ++i) {
      const PlannedBuffer& b = plan.buffers[i];
      auto opened = device->Open(b.ipc_handle, b.device, b.offset, b.size);
      if (!opened.ok()) {
        return absl::Status(opened.status().code(),
                            absl::StrCat("buffer ", i, ": ", opened.status().message()));
      }
      out.mappings.push_back(opened->first);
      bases.push_back(opened->second);
    }
    for (const PlannedTensor& t : plan.tensors) {
      out.tensor_data.push_back(bases[t.buffer] +
                                t.offset * ElementSize(plan.buffers[t.buffer].dtype));
    }
    out.plan = std::move(plan);
    return out;
  }
  if (!owner.has_value() && !plan.buffers.empty()) {
    return absl::PermissionDeniedError(
        "host shared memory can be registered only over gstabd's unix socket, where gstabd "
        "knows the caller's uid and checks that the objects are its own");
  }
  std::vector<unsigned char*> bases;
  // The objects mapped, each once, and their bytes together: within the cap of one object, so a
  // registration cannot map the cap a buffer times over (address space, mappings).
  std::set<const ShmMapping*> objects;
  uint64_t object_bytes = 0;
  for (size_t i = 0; i < plan.buffers.size(); ++i) {
    const PlannedBuffer& b = plan.buffers[i];
    absl::StatusOr<std::shared_ptr<ShmMapping>> m =
        registry->Acquire(b.shm_name, plan.max_object_bytes, owner);
    if (!m.ok()) {
      return absl::Status(m.status().code(),
                          absl::StrCat("buffer ", i, ": ", m.status().message()));
    }
    if (b.offset > (*m)->size() || b.size > (*m)->size() - b.offset) {
      return absl::InvalidArgumentError(
          absl::StrCat("buffer ", i, ": offset ", b.offset, " + size ", b.size, " exceeds the ",
                       (*m)->size(), " bytes of shared memory '", b.shm_name, "'"));
    }
    if (objects.insert(m->get()).second) {
      object_bytes += (*m)->size();
      if (object_bytes > plan.max_object_bytes) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "buffer ", i, ": the registration's shared-memory objects come to more than ",
            plan.max_object_bytes,
            " bytes together, this daemon's cap (--max_bytes and padding): put the gradients in "
            "fewer, smaller objects"));
      }
    }
    bases.push_back((*m)->data());
    out.host_objects.push_back(m->get());
    out.mappings.push_back(*std::move(m));
  }
  for (const PlannedTensor& t : plan.tensors) {
    const PlannedBuffer& b = plan.buffers[t.buffer];
    out.tensor_data.push_back(bases[t.buffer] + b.offset + t.offset * ElementSize(b.dtype));
  }
  if (plan.progress.has_value()) {
    const auto [buffer, offset] = *plan.progress;
    const ShmMapping* object = out.host_objects[buffer];
    if (object->size() < 8 || offset > object->size() - 8) {
      return absl::InvalidArgumentError(
          absl::StrCat("progress: the word at byte ", offset, " lies past the ", object->size(),
                       " bytes of shared memory '", plan.buffers[buffer].shm_name, "'"));
    }
    out.progress = reinterpret_cast<uint64_t*>(bases[buffer] + offset);
  }
  out.plan = std::move(plan);
  return out;
}

}  // namespace gstab
