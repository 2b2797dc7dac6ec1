#include "server/registration.h"

#include <algorithm>
#include <limits>
#include <map>
#include <set>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/dtype_proto.h"
#include "common/job_name.h"
#include "common/shm_names.h"
#include "server/reserved_names.h"

namespace gstab {
namespace {

// Room in a shared object beyond its registered bytes: padding between tensors (the client's
// arena aligns each to 64 bytes) and the page at the end; at least this much.
constexpr uint64_t kMinObjectPadding = uint64_t{64} << 20;

// RegisterBuffersRequest.progress, checked against the plan's buffers and the tensors' extents
// in each object ("shm:<name>": sorted (first byte, end byte, tensor index)).
absl::Status PlanProgress(
    const v1::RegisterBuffersRequest& request,
    const std::map<std::string, std::vector<std::tuple<uint64_t, uint64_t, int>>>& extents,
    RegistrationPlan* plan) {
  const v1::StepProgress& p = request.progress();
  if (plan->cuda_device >= 0) {
    return absl::InvalidArgumentError(
        "progress: a word in host shared memory, for host_shm registrations (a cuda_ipc "
        "worker's stream waits on gstabd's done word instead)");
  }
  if (p.buffer() >= plan->buffers.size()) {
    return absl::InvalidArgumentError(absl::StrCat("progress: buffer index ", p.buffer(),
                                                   " is out of range (", plan->buffers.size(),
                                                   " buffers)"));
  }
  if (p.offset() % 8 != 0 || p.offset() > std::numeric_limits<uint64_t>::max() - 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "progress: offset ", p.offset(),
        p.offset() % 8 != 0 ? " is not that of an aligned 8-byte word" : " is out of range"));
  }
  const std::string& object = plan->buffers[p.buffer()].shm_name;
  auto spans = extents.find("shm:" + object);
  if (spans != extents.end()) {
    for (const auto& [begin, end, index] : spans->second) {
      if (p.offset() < end && begin < p.offset() + 8) {
        return absl::InvalidArgumentError(absl::StrCat(
            "progress: the word at byte ", p.offset(), " of '", object, "' lies in tensor ", index,
            " ('", request.tensors(index).name(), "'): gstabd would write over it"));
      }
    }
  }
  plan->progress.emplace(p.buffer(), p.offset());
  return absl::OkStatus();
}

absl::StatusOr<PlannedBuffer> PlanBuffer(const v1::Buffer& b, size_t i, bool cuda_ipc) {
  PlannedBuffer out;
  const bool cuda = b.transport() == v1::TRANSPORT_CUDA_IPC;
  if (cuda) {
    if (b.ipc_handle().size() != 64) {
      return absl::InvalidArgumentError(absl::StrCat("buffer ", i, ": cuda_ipc handle is ",
                                                     b.ipc_handle().size(),
                                                     " bytes, a cudaIpcMemHandle_t is 64"));
    }
    if (b.device() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("buffer ", i, ": device ordinal ", b.device(), " is negative"));
    }
    if (!b.device_uuid().empty() && b.device_uuid().size() != 16) {
      return absl::InvalidArgumentError(absl::StrCat("buffer ", i, ": device_uuid is ",
                                                     b.device_uuid().size(),
                                                     " bytes, a CUDA device UUID is 16"));
    }
  } else if (b.transport() == v1::TRANSPORT_HOST_SHM) {
    if (absl::Status s = ValidateShmName(b.shm_name()); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("buffer ", i, ": ", s.message()));
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat("buffer ", i, ": unknown transport ",
                                                   static_cast<int>(b.transport()),
                                                   ": expected HOST_SHM or CUDA_IPC"));
  }
  const std::optional<DType> dtype = DTypeFromProto(b.dtype());
  if (!dtype.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("buffer ", i, ": unknown dtype ",
                                                   static_cast<int>(b.dtype()),
                                                   ": expected FLOAT32, BFLOAT16 or FLOAT16"));
  }
  const uint64_t element = ElementSize(*dtype);
  if (b.size_bytes() == 0 || b.size_bytes() % element != 0) {
    return absl::InvalidArgumentError(absl::StrCat("buffer ", i, ": size ", b.size_bytes(),
                                                   " bytes is not a positive multiple of its ",
                                                   element, "-byte elements"));
  }
  if (b.offset() % element != 0) {
    return absl::InvalidArgumentError(absl::StrCat("buffer ", i, ": offset ", b.offset(),
                                                   " is not aligned to its ", element,
                                                   "-byte elements"));
  }
  if (b.offset() > std::numeric_limits<uint64_t>::max() - b.size_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("buffer ", i, ": offset ", b.offset(),
                                                   " + size ", b.size_bytes(), " overflows"));
  }
  if (cuda && !cuda_ipc) {
    // Well-formed, but this daemon has no CUDA pipeline to run it on.
    return absl::UnimplementedError(
        absl::StrCat("buffer ", i,
                     ": cuda_ipc buffers need gstabd's CUDA pipeline, which this daemon does "
                     "not run (no GPU, or --backend=cpu); register host_shm buffers"));
  }
  out.cuda = cuda;
  out.ipc_handle = cuda ? b.ipc_handle() : "";
  out.device = cuda ? b.device() : 0;
  out.device_uuid = cuda ? b.device_uuid() : "";
  out.shm_name = b.shm_name();
  out.offset = b.offset();
  out.size = b.size_bytes();
  out.dtype = *dtype;
  return out;
}

}  // namespace

const char* ReductionName(int reduction) {
  switch (reduction) {
    case v1::REDUCTION_REPLICATED:
      return "replicated";
    case v1::REDUCTION_NODE_SHARDED:
      return "node-sharded";
    default:
      return "sharded";
  }
}

absl::Status ValidateTensorName(const std::string& what, const std::string& name) {
  if (!IsTensorName(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", name, "' must be 1 to 256 characters of [A-Za-z0-9._/:-]"));
  }
  return absl::OkStatus();
}

absl::Status ValidateJobName(const std::string& job) {
  if (!IsJobName(job)) {
    return absl::InvalidArgumentError(
        absl::StrCat("job name '", job, "' must be 1 to 128 characters of [A-Za-z0-9._-]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<RegistrationPlan> ValidateRegistration(const v1::RegisterBuffersRequest& request,
                                                      const RegistrationCaps& caps) {
  if (request.buffers_size() == 0 || request.tensors_size() == 0) {
    return absl::InvalidArgumentError("RegisterBuffers needs at least one buffer and one tensor");
  }
  if (static_cast<uint32_t>(request.buffers_size()) > caps.max_buffers) {
    return absl::ResourceExhaustedError(absl::StrCat(request.buffers_size(),
                                                     " buffers exceed this daemon's cap of ",
                                                     caps.max_buffers, " per worker"));
  }
  if (static_cast<uint32_t>(request.tensors_size()) > caps.max_tensors) {
    return absl::ResourceExhaustedError(absl::StrCat(request.tensors_size(),
                                                     " tensors exceed this daemon's cap of ",
                                                     caps.max_tensors, " per worker"));
  }
  RegistrationPlan plan;
  const uint64_t padding = std::max<uint64_t>(kMinObjectPadding, uint64_t{caps.max_tensors} * 64);
  plan.max_object_bytes =
      caps.max_bytes > UINT64_MAX - padding ? UINT64_MAX : caps.max_bytes + padding;
  for (int i = 0; i < request.buffers_size(); ++i) {
    absl::StatusOr<PlannedBuffer> b =
        PlanBuffer(request.buffers(i), static_cast<size_t>(i), caps.cuda_ipc);
    if (!b.ok()) return b.status();
    plan.buffers.push_back(*std::move(b));
  }
  const PlannedBuffer& buffer0 = plan.buffers[0];
  if (buffer0.cuda) plan.cuda_device = buffer0.device;
  for (size_t i = 1; i < plan.buffers.size(); ++i) {
    const PlannedBuffer& b = plan.buffers[i];
    const char* differs = b.cuda != buffer0.cuda                 ? "its transport"
                          : !b.cuda                              ? nullptr
                          : b.device != buffer0.device           ? "its device ordinal"
                          : b.device_uuid != buffer0.device_uuid ? "its device uuid"
                                                                 : nullptr;
    if (differs != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "buffers[", i, "] differs from buffers[0] in ", differs,
          ": a registration's buffers must all be cuda_ipc on one device, or all host_shm"));
    }
  }

  std::set<std::string> names;
  std::map<std::string, v1::Reduction> group_reduction;
  // Per memory object (several buffers may name the same one): (first byte, end byte, tensor
  // index), to find overlaps. Overlapping tensors would be counted and scaled twice.
  std::map<std::string, std::vector<std::tuple<uint64_t, uint64_t, int>>> extents;
  for (int i = 0; i < request.tensors_size(); ++i) {
    const v1::Tensor& t = request.tensors(i);
    const std::string where = absl::StrCat("tensor ", i, " ('", t.name(), "')");
    if (absl::Status s = ValidateTensorName(absl::StrCat("tensor ", i, " name"), t.name());
        !s.ok()) {
      return s;
    }
    if (!names.insert(t.name()).second) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": duplicate tensor name"));
    }
    const std::string group = t.group().empty() ? t.name() : t.group();
    if (absl::Status s = ValidateTensorName(where + " group", group); !s.ok()) return s;
    if (group == kOtherGroup) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": group name '", kOtherGroup,
          "' is reserved (the metrics aggregate groups beyond --metrics_max_groups under it)"));
    }
    if (t.reduction() != v1::REDUCTION_SHARDED && t.reduction() != v1::REDUCTION_REPLICATED &&
        t.reduction() != v1::REDUCTION_NODE_SHARDED) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": unknown reduction ", static_cast<int>(t.reduction())));
    }
    auto [it, inserted] = group_reduction.emplace(group, t.reduction());
    if (!inserted && it->second != t.reduction()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": group '", group, "' mixes ",
                                                     ReductionName(it->second), " and ",
                                                     ReductionName(t.reduction()), " tensors"));
    }
    if (t.buffer() >= plan.buffers.size()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": buffer index ", t.buffer(),
                                                     " is out of range (", plan.buffers.size(),
                                                     " buffers)"));
    }
    const PlannedBuffer& b = plan.buffers[t.buffer()];
    const uint64_t capacity = b.size / ElementSize(b.dtype);
    if (t.numel() == 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": numel must be positive"));
    }
    if (t.offset() > capacity || t.numel() > capacity - t.offset()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": elements [", t.offset(), ", ", t.offset(), " + ", t.numel(),
          ") lie outside buffer ", t.buffer(), ", which holds ", capacity, " elements"));
    }
    const uint64_t first = b.offset + t.offset() * ElementSize(b.dtype);  // within b.size: no
    extents[b.cuda ? "ipc:" + b.ipc_handle : "shm:" + b.shm_name]  // overflow (checked above)
        .emplace_back(first, first + t.numel() * ElementSize(b.dtype), i);
    const uint64_t bytes = t.numel() * ElementSize(b.dtype);  // within b.size (checked above)
    if (bytes > caps.max_bytes - std::min(plan.total_bytes, caps.max_bytes)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the tensors up to tensor ", i, " ('", t.name(),
                       "') add up to more than this daemon's "
                       "cap of ",
                       caps.max_bytes, " registered bytes (--max_bytes)"));
    }
    plan.total_bytes += bytes;
    plan.tensors.push_back(
        PlannedTensor{t.name(), group, t.reduction(), t.buffer(), t.offset(), t.numel()});
  }
  // A tensor's group of its own is named after it: another tensor naming that group would
  // silently share its norm.
  std::map<std::string, const std::string*> named_groups;  // group -> a tensor naming it
  for (const v1::Tensor& t : request.tensors()) {
    if (!t.group().empty()) named_groups.emplace(t.group(), &t.name());
  }
  for (const v1::Tensor& t : request.tensors()) {
    auto named = t.group().empty() ? named_groups.find(t.name()) : named_groups.end();
    if (named != named_groups.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name(),
                       "' has a group of its own (no group given), which is named after "
                       "it, and tensor '",
                       *named->second, "' names group '", t.name(),
                       "': the two would share one norm; give the first its group by name ('",
                       t.name(), "') if they are to, or the second another group"));
    }
  }
  for (auto& [object, spans] : extents) {
    std::sort(spans.begin(), spans.end());
    for (size_t k = 1; k < spans.size(); ++k) {
      const auto& [begin, end, index] = spans[k];
      const auto& prev = spans[k - 1];
      if (begin < std::get<1>(prev)) {
        const v1::Tensor& t = request.tensors(index);
        const v1::Tensor& p = request.tensors(std::get<2>(prev));
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor ", index, " ('", t.name(), "') overlaps tensor ", std::get<2>(prev), " ('",
            p.name(), "') in the memory of buffer ", t.buffer(),
            t.buffer() == p.buffer() ? "" : absl::StrCat(" and buffer ", p.buffer())));
      }
    }
  }
  if (request.has_progress()) {
    if (absl::Status s = PlanProgress(request, extents, &plan); !s.ok()) return s;
  }
  return plan;
}

}  // namespace gstab
