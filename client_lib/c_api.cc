// The C ABI of client_lib/gstab.h over gstab::Client.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <set>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "client_lib/c_api_internal.h"
#include "client_lib/client.h"
#include "client_lib/gstab.h"
#include "common/job_name.h"

struct gstab_arena {
  gstab::GradientArena arena;
  pid_t owner = getpid();
  std::set<std::string> names;  // its tensors'
};

namespace gstab::capi {
namespace {
thread_local std::string g_last_error;
// Set when a failure's message could not be kept (no memory for it): what gstab_last_error says
// then. Null otherwise.
thread_local const char* g_last_error_fixed = nullptr;
thread_local bool g_last_step_unanswered = false;
}  // namespace

void NoteStepOutcome(const absl::Status& status) {
  g_last_step_unanswered = Client::StepUnanswered(status);
}

gstab_status Report(const absl::Status& status) noexcept {
  if (!status.ok()) {
    try {
      // gstab's own failures all say what went wrong; gRPC's may not (a request gstabd could
      // not read, say), and "" would read as "nothing failed".
      g_last_error = status.message().empty()
                         ? absl::StrCat(absl::StatusCodeToString(status.code()), " (no message)")
                         : std::string(status.message());
      g_last_error_fixed = nullptr;
    } catch (...) {  // out of memory: Guarded's report of it must not throw again
      g_last_error_fixed = "out of host memory (the failure's own message could not be kept)";
    }
  }
  return static_cast<gstab_status>(status.code());
}

gstab_status ReportOutOfMemory() noexcept {
  g_last_error_fixed = "out of host memory";
  return GSTAB_RESOURCE_EXHAUSTED;
}

absl::Status CheckOwner(pid_t owner, const char* what) {
  if (owner == getpid()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "this ", what, " was made by process ", owner, ", not this one (", getpid(),
      "): a forked child inherits its parent's handles, not their threads, connection or "
      "ownership of shared memory",
      std::string_view(what) == "client"
          ? ", nor may it connect a client of its own (gRPC does not survive fork): start "
            "workers anew (exec, spawn, torchrun)"
          : "; it makes its own"));
}

void SetLastStep(gstab_client* client, v1::StepResponse response, gstab_step_result* result) {
  client->last_step = std::move(response);
  if (result == nullptr) return;
  const v1::StepResponse& s = client->last_step;
  *result = gstab_step_result{};
  result->skip = s.skip();
  result->diverging = s.diverging();
  result->num_groups = static_cast<size_t>(s.groups_size());
  double raw = 0, stabilized = 0;
  for (const auto& g : s.groups()) {
    raw += g.norm() * g.norm();
    stabilized += g.stabilized_norm() * g.stabilized_norm();
    result->spikes += g.spike();
  }
  result->norm = std::sqrt(raw);
  result->stabilized_norm = std::sqrt(stabilized);
}

absl::Status CheckTensor(const char* name, const char* group, uint64_t numel, gstab_dtype dtype,
                         uint32_t flags) {
  // Refused here, naming the call, rather than by gstabd at registration, once the memory is
  // reserved and the arena cannot take the tensor back.
  if (!IsTensorName(name)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor name '", absl::CHexEscape(name),
                                                   "' must be 1 to ", kMaxTensorNameLength,
                                                   " characters of [A-Za-z0-9._/:-]"));
  }
  if (group != nullptr && *group != '\0' && !IsTensorName(group)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "': group '", absl::CHexEscape(group),
                     "' must be empty (a group of its "
                     "own) or 1 to ",
                     kMaxTensorNameLength, " characters of [A-Za-z0-9._/:-]"));
  }
  if (numel == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "' has no elements: add only tensors that hold some"));
  }
  constexpr uint64_t kMaxElements = uint64_t{1} << 50;  // far beyond any machine's memory
  if (numel > kMaxElements) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has ", numel,
                                                   " elements, more than 2^50: is its element "
                                                   "count right?"));
  }
  if (dtype < GSTAB_FLOAT32 || dtype > GSTAB_FLOAT16) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown dtype ", static_cast<int>(dtype),
                     ": expected GSTAB_FLOAT32, GSTAB_BFLOAT16 or GSTAB_FLOAT16"));
  }
  constexpr uint32_t kKnown = GSTAB_TENSOR_REPLICATED | GSTAB_TENSOR_NODE_SHARDED;
  if ((flags & ~kKnown) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown tensor flags 0x", absl::Hex(flags & ~kKnown),
                     ": the flags are GSTAB_TENSOR_REPLICATED and GSTAB_TENSOR_NODE_SHARDED"));
  }
  if (flags == kKnown) {
    return absl::InvalidArgumentError(
        "a tensor is GSTAB_TENSOR_REPLICATED or GSTAB_TENSOR_NODE_SHARDED, not both");
  }
  return absl::OkStatus();
}

v1::Reduction ReductionOf(uint32_t flags) {
  if ((flags & GSTAB_TENSOR_REPLICATED) != 0) return v1::REDUCTION_REPLICATED;
  if ((flags & GSTAB_TENSOR_NODE_SHARDED) != 0) return v1::REDUCTION_NODE_SHARDED;
  return v1::REDUCTION_SHARDED;
}

}  // namespace gstab::capi

namespace {

// The structs of the C ABI, pinned where size_t and pointers are 64-bit (Linux on x86-64 and
// aarch64): bindings lay them out by hand (gstab/_native.py's ctypes structs, the CUDA results
// buffer's readers), and programs built against libgstab.so.0.2 keep working with later builds
// of it. A change here needs a new SONAME.
#if UINTPTR_MAX == UINT64_MAX
template <typename T>
constexpr bool Pinned(size_t size) {
  return sizeof(T) == size && alignof(T) == 8;
}
static_assert(Pinned<gstab_step_result>(40) && offsetof(gstab_step_result, num_groups) == 16 &&
                  offsetof(gstab_step_result, stabilized_norm) == 32,
              "gstab_step_result's layout is the ABI's");
static_assert(Pinned<gstab_group_result>(56) && offsetof(gstab_group_result, z) == 32 &&
                  offsetof(gstab_group_result, diverging) == 48,
              "gstab_group_result's layout is the ABI's");
static_assert(Pinned<gstab_attach_options>(56) &&
                  offsetof(gstab_attach_options, rendezvous) == 24 &&
                  offsetof(gstab_attach_options, config) == 48,
              "gstab_attach_options' layout is the ABI's");
static_assert(Pinned<gstab_results_header>(16) && offsetof(gstab_results_header, flags) == 12,
              "gstab_results_header's layout is the ABI's");
static_assert(Pinned<gstab_group_outcome>(40) && offsetof(gstab_group_outcome, flags) == 32,
              "gstab_group_outcome's layout is the ABI's");
#endif

using gstab::capi::CheckOwner;
using gstab::capi::Guarded;
using gstab::capi::Report;

}  // namespace

extern "C" {

const char* gstab_version(void) { return GSTAB_VERSION; }

int gstab_last_step_unanswered(void) { return gstab::capi::g_last_step_unanswered ? 1 : 0; }

const char* gstab_last_error(void) {
  return gstab::capi::g_last_error_fixed != nullptr ? gstab::capi::g_last_error_fixed
                                                    : gstab::capi::g_last_error.c_str();
}

gstab_status gstab_connect(const char* socket_path, gstab_client** out) {
  if (out == nullptr) return Report(absl::InvalidArgumentError("out must not be NULL"));
  *out = nullptr;
  return Guarded([&] {
    auto client = gstab::Client::Connect(socket_path != nullptr ? socket_path : "");
    if (!client.ok()) return Report(client.status());
    *out = new gstab_client;
    (*out)->client = *std::move(client);
    return GSTAB_OK;
  });
}

void gstab_client_destroy(gstab_client* client) {
  // A forked child's copy is left alone: closing it would wait for a thread that is not there
  // and detach its parent's session.
  if (client != nullptr && CheckOwner(client->owner, "client").ok()) delete client;
}

gstab_status gstab_attach(gstab_client* client, const char* job, uint32_t rank, uint32_t world_size,
                          uint32_t local_rank, uint32_t local_world_size, const char* policy) {
  gstab_attach_options options{};
  options.rank = rank;
  options.world_size = world_size;
  options.local_rank = local_rank;
  options.local_world_size = local_world_size;
  options.policy = policy;
  return gstab_attach_with_options(client, job, &options);
}

gstab_status gstab_detach(gstab_client* client) {
  if (client == nullptr) return Report(absl::InvalidArgumentError("client must not be NULL"));
  if (absl::Status s = CheckOwner(client->owner, "client"); !s.ok()) return Report(s);
  return Guarded([&] { return Report(client->client->Detach()); });
}

gstab_status gstab_arena_create(gstab_arena** out) {
  if (out == nullptr) return Report(absl::InvalidArgumentError("out must not be NULL"));
  *out = nullptr;
  return Guarded([&] {
    *out = new gstab_arena;
    return GSTAB_OK;
  });
}

void gstab_arena_destroy(gstab_arena* arena) {
  // A forked child's copy is left alone: destroying it would remove the parent's shared memory.
  if (arena != nullptr && CheckOwner(arena->owner, "arena").ok()) delete arena;
}

gstab_status gstab_arena_add_tensor(gstab_arena* arena, const char* name, uint64_t numel,
                                    gstab_dtype dtype, const char* group, size_t* index) {
  return gstab_arena_add_tensor_flags(arena, name, numel, dtype, group, 0, index);
}

gstab_status gstab_arena_add_tensor_flags(gstab_arena* arena, const char* name, uint64_t numel,
                                          gstab_dtype dtype, const char* group, uint32_t flags,
                                          size_t* index) {
  if (index != nullptr) *index = SIZE_MAX;  // first: set when any check below fails, too
  if (arena == nullptr || name == nullptr) {
    return Report(absl::InvalidArgumentError("arena and name must not be NULL"));
  }
  if (absl::Status s = CheckOwner(arena->owner, "arena"); !s.ok()) return Report(s);
  if (absl::Status s = gstab::capi::CheckTensor(name, group, numel, dtype, flags); !s.ok()) {
    return Report(s);
  }
  if (arena->arena.allocated()) {
    return Report(absl::FailedPreconditionError(
        absl::StrCat("tensor '", name,
                     "' comes after the arena was allocated: add every tensor before allocating")));
  }
  return Guarded([&] {
    if (!arena->names.insert(name).second) {
      return Report(absl::InvalidArgumentError(
          absl::StrCat("tensor '", name,
                       "' is in the arena already: each tensor's name is its "
                       "own")));
    }
    const size_t i =
        arena->arena.AddTensor(name, numel, static_cast<gstab::DType>(dtype),
                               group == nullptr ? "" : group, gstab::capi::ReductionOf(flags));
    if (index != nullptr) *index = i;
    return GSTAB_OK;
  });
}

gstab_status gstab_arena_allocate(gstab_arena* arena) {
  if (arena == nullptr) return Report(absl::InvalidArgumentError("arena must not be NULL"));
  if (absl::Status s = CheckOwner(arena->owner, "arena"); !s.ok()) return Report(s);
  return Guarded([&] { return Report(arena->arena.Allocate()); });
}

void* gstab_arena_data(gstab_arena* arena, size_t index) {
  if (arena == nullptr) {
    Report(absl::InvalidArgumentError("arena must not be NULL"));
    return nullptr;
  }
  if (absl::Status s = CheckOwner(arena->owner, "arena"); !s.ok()) {
    Report(s);
    return nullptr;
  }
  if (index >= arena->arena.num_tensors()) {
    Report(absl::OutOfRangeError(absl::StrCat("tensor ", index, " is past the arena's ",
                                              arena->arena.num_tensors(), " tensors")));
    return nullptr;
  }
  void* data = arena->arena.data(index);
  if (data == nullptr) {
    Report(absl::FailedPreconditionError(
        absl::StrCat("tensor ", index, " has no memory: call gstab_arena_allocate first")));
  }
  return data;
}

void gstab_arena_unlink(gstab_arena* arena) {
  if (arena != nullptr && CheckOwner(arena->owner, "arena").ok()) arena->arena.Unlink();
}

gstab_status gstab_register_arena(gstab_client* client, const gstab_arena* arena) {
  if (client == nullptr) return Report(absl::InvalidArgumentError("client must not be NULL"));
  if (absl::Status s = CheckOwner(client->owner, "client"); !s.ok()) return Report(s);
  return Guarded([&] {
    absl::Status s = arena == nullptr ? absl::InvalidArgumentError("arena must not be NULL")
                                      : CheckOwner(arena->owner, "arena");
    if (s.ok() && !arena->arena.allocated()) {
      s = absl::FailedPreconditionError(
          "the arena has no memory yet: call gstab_arena_allocate before registering it");
    }
    if (!s.ok()) {
      client->client->RegistrationFailed(s);  // which Register does for its own failures
      return Report(s);
    }
    return Report(client->client->Register(arena->arena));
  });
}

gstab_status gstab_step(gstab_client* client, uint64_t step, gstab_step_result* result) {
  gstab::capi::NoteStepOutcome(absl::OkStatus());        // first: a refused call was not unanswered
  if (result != nullptr) *result = gstab_step_result{};  // first: set when anything fails
  if (client == nullptr) return Report(absl::InvalidArgumentError("client must not be NULL"));
  if (absl::Status s = CheckOwner(client->owner, "client"); !s.ok()) return Report(s);
  return Guarded([&] {
    client->last_step.Clear();  // a failed step leaves no results of an earlier one
    absl::StatusOr<gstab::v1::StepResponse> r = client->client->Step(step);
    gstab::capi::NoteStepOutcome(r.status());
    if (!r.ok()) return Report(r.status());
    gstab::capi::SetLastStep(client, *std::move(r), result);
    return GSTAB_OK;
  });
}

gstab_status gstab_step_group(const gstab_client* client, size_t index, gstab_group_result* out) {
  if (out != nullptr) *out = gstab_group_result{};  // first: set when any check below fails
  if (client == nullptr || out == nullptr) {
    return Report(absl::InvalidArgumentError("client and out must not be NULL"));
  }
  if (absl::Status s = CheckOwner(client->owner, "client"); !s.ok()) return Report(s);
  if (index >= static_cast<size_t>(client->last_step.groups_size())) {
    return Report(absl::InvalidArgumentError(
        absl::StrCat("group index ", index, " is out of range: the last step has ",
                     client->last_step.groups_size(), " groups (gstab_step_result.num_groups)")));
  }
  const auto& g = client->last_step.groups(static_cast<int>(index));
  *out = gstab_group_result{g.group().c_str(), g.norm(),    g.stabilized_norm(), g.scale(), g.z(),
                            g.spike(),         g.skipped(), g.diverging()};
  return GSTAB_OK;
}

uint64_t gstab_step_statistics_rolled_back(const gstab_client* client) {
  if (client == nullptr) return 0;
  if (absl::Status s = CheckOwner(client->owner, "client"); !s.ok()) return Report(s), 0;
  return client->last_step.statistics_rolled_back();
}

const char* gstab_step_not_applied(const gstab_client* client) {
  if (client == nullptr) return "";
  if (absl::Status s = CheckOwner(client->owner, "client"); !s.ok()) return Report(s), "";
  return client->last_step.not_applied().c_str();
}

}  // extern "C"
