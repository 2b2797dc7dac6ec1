#include "client_lib/cuda_gradients.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/done_written.h"
#include "common/dtype_proto.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/driver_api.h"

namespace gstab {
namespace {

// The least CloseResults waits for gstabd's done write of the last step before writing it
// itself; past gstabd's step timeout (twice it), after which even a stalled multi-node step
// has ended and written `done`.
constexpr absl::Duration kMinDoneWait = absl::Seconds(120);

// How long CloseResults gives its own done write to land.
constexpr absl::Duration kOwnWriteWait = absl::Seconds(10);

// Whether `query` (cudaEventQuery or cudaStreamQuery of something) stopped answering
// cudaErrorNotReady within `timeout`.
template <typename Query>
bool WaitDone(Query query, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    const cudaError_t e = query();
    ClearStaleCudaError();  // a cudaErrorNotReady must not surface in the caller's next check
    if (e != cudaErrorNotReady) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
}

// The CudaGradients last registered through each client (by Client::id, never reused as an
// address can be): gstabd frees the results buffer of a registration it replaces, so a new
// registration through the same client first has the one it replaces let go of its mapping.
absl::Mutex registered_mu(absl::kConstInit);
std::map<uint64_t, CudaGradients*>& Registered() ABSL_EXCLUSIVE_LOCKS_REQUIRED(registered_mu) {
  static auto* registered = new std::map<uint64_t, CudaGradients*>;
  return *registered;
}

// Drops `g` from Registered() wherever it is.
void Forget(const CudaGradients* g) ABSL_EXCLUSIVE_LOCKS_REQUIRED(registered_mu) {
  for (auto it = Registered().begin(); it != Registered().end();) {
    it = it->second == g ? Registered().erase(it) : std::next(it);
  }
}

// Makes `device` current for a call, and gives the calling thread its current device back after:
// a CudaGradients' calls leave a framework's current device as they found it. A thread without
// a CUDA context (no device in use yet) stays on `device`, rather than have a context made on
// the device the runtime defaults to.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    int previous = -1;
    if (ThreadHasCudaContext()) {
      if (cudaGetDevice(&previous) != cudaSuccess) {
        ClearStaleCudaError();
        previous = -1;
      }
    }
    if (previous != device) previous_ = previous;
    status_ = cudaSetDevice(device);
  }
  ~DeviceScope() {
    if (previous_ >= 0 && cudaSetDevice(previous_) != cudaSuccess) ClearStaleCudaError();
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  cudaError_t status() const { return status_; }

 private:
  int previous_ = -1;
  cudaError_t status_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CudaGradients>> CudaGradients::Create(int device) {
  std::unique_ptr<CudaGradients> g(new CudaGradients(device));
  const DeviceScope scope(device);
  if (scope.status() != cudaSuccess) {
    // Where a process first touches CUDA: say so plainly (no driver, no GPU, a bad ordinal).
    const cudaError_t err = scope.status();
    ClearStaleCudaError();
    return absl::FailedPreconditionError(
        absl::StrCat("cannot use CUDA device ", device, " in this process: ",
                     cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
  }
  cudaDeviceProp prop;
  RETURN_IF_CUDA_ERROR(cudaGetDeviceProperties(&prop, device));
  g->device_uuid_.assign(prop.uuid.bytes, sizeof prop.uuid.bytes);
  return g;
}

CudaGradients::~CudaGradients() {
  {
    absl::MutexLock lock(&registered_mu);  // after a release for a lost gstabd under way
    Forget(this);
    // And after another registration through the same client has closed this one's results
    // (on another thread: a framework's finalizer may destroy this one meanwhile).
    registered_mu.Await(absl::Condition(
        +[](int* pins) { return *pins == 0; }, &pins_));
  }
  CloseResults();
  // On this object's device: a thread with no CUDA context of its own (a finalizer) would make
  // one on device 0 for the frees.
  const DeviceScope scope(device_);
  absl::MutexLock lock(&handshake_mu_);
  if (done_passed_ != nullptr) cudaEventDestroy(done_passed_);
  if (streams_stuck_) return;  // AllocateTensor's memory stays: a free would wait for good
  for (void* p : owned_) cudaFree(p);
}

absl::Status CudaGradients::AddTensor(std::string name, void* ptr, uint64_t numel, DType dtype,
                                      std::string group, v1::Reduction reduction) {
  if (absl::Status s = CheckNewName(name); !s.ok()) return s;
  // The IPC handle names the allocation (a framework's caching allocator hands out pieces of
  // larger blocks), so register the block's handle and the tensor's offset inside it.
  const DeviceScope scope(device_);
  RETURN_IF_CUDA_ERROR(scope.status());
  cudaPointerAttributes where;
  if (cudaPointerGetAttributes(&where, ptr) == cudaSuccess && where.type == cudaMemoryTypeDevice &&
      where.device != device_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "' is on CUDA device ", where.device,
        ", not on this CudaGradients' device ", device_, ": make one CudaGradients per device"));
  }
  (void)cudaGetLastError();  // an unknown pointer is reported below
  absl::StatusOr<std::pair<void*, size_t>> range = CudaAllocationRange(ptr);
  if (!range.ok()) {
    return absl::Status(range.status().code(),
                        absl::StrCat("tensor '", name, "': ", range.status().message()));
  }
  cudaIpcMemHandle_t h;
  if (cudaError_t e = cudaIpcGetMemHandle(&h, range->first); e != cudaSuccess) {
    (void)cudaGetLastError();
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "': its memory cannot be shared over CUDA IPC (", cudaGetErrorString(e),
        "); memory from cuMemCreate or a stream-ordered pool cannot, such as PyTorch's "
        "expandable segments (expandable_segments:True in PYTORCH_ALLOC_CONF or "
        "PYTORCH_CUDA_ALLOC_CONF) or its backend:cudaMallocAsync: allocate the gradients with "
        "cudaMalloc, or turn those settings off"));
  }
  const uint64_t offset =
      static_cast<uint64_t>(static_cast<char*>(ptr) - static_cast<char*>(range->first));
  const uint64_t element = ElementSize(dtype);
  if (offset % element != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "' is not aligned to its ", DTypeName(dtype), " elements"));
  }
  // Refused here, naming the tensor, rather than by gstabd at registration, after the earlier
  // registration's results were let go.
  if (numel > (range->second - offset) / element) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "': ", numel, " ", DTypeName(dtype), " elements from byte ", offset,
        " run past the end of its CUDA allocation (", range->second, " bytes)"));
  }
  // One buffer per allocation and dtype, its tensors at their offsets in it: a model's tensors
  // share a few of a caching allocator's blocks, and gstabd caps the buffers of a registration.
  std::string handle(reinterpret_cast<const char*>(&h), sizeof h);
  auto [buffer, added] = buffers_.try_emplace(std::make_pair(handle, dtype),
                                              static_cast<uint32_t>(request_.buffers_size()));
  if (added) {
    v1::Buffer* b = request_.add_buffers();
    b->set_transport(v1::TRANSPORT_CUDA_IPC);
    b->set_ipc_handle(std::move(handle));
    b->set_offset(0);
    b->set_size_bytes(range->second / element * element);  // the whole allocation
    b->set_dtype(DTypeToProto(dtype));
    b->set_device(device_);
    b->set_device_uuid(device_uuid_);
  }
  names_.insert(name);
  v1::Tensor* t = request_.add_tensors();
  t->set_name(std::move(name));
  t->set_buffer(buffer->second);
  t->set_offset(offset / element);
  t->set_numel(numel);
  t->set_group(std::move(group));
  t->set_reduction(reduction);
  return absl::OkStatus();
}

absl::Status CudaGradients::CheckNewName(const std::string& name) const {
  if (names_.count(name) == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("tensor '", name,
                   "' was added already: each tensor of a registration has a name of its own"));
}

absl::StatusOr<void*> CudaGradients::AllocateTensor(std::string name, uint64_t numel, DType dtype,
                                                    std::string group, v1::Reduction reduction) {
  if (numel == 0) return absl::InvalidArgumentError("cannot allocate a tensor of 0 elements");
  if (absl::Status s = CheckNewName(name); !s.ok()) return s;  // before its memory is taken
  const DeviceScope scope(device_);
  RETURN_IF_CUDA_ERROR(scope.status());
  void* p = nullptr;
  // Whole IPC granules: gstabd maps the allocation, and must reach no other memory of this
  // process through it.
  RETURN_IF_CUDA_ERROR(cudaMalloc(&p, RoundUpToIpcGranule(numel * ElementSize(dtype))));
  if (absl::Status s = AddTensor(std::move(name), p, numel, dtype, std::move(group), reduction);
      !s.ok()) {
    cudaFree(p);
    return s;
  }
  owned_.push_back(p);
  return p;
}

cudaStream_t CudaGradients::QueueDoneWrite() {
  cudaStream_t side = nullptr;
  if (cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking) != cudaSuccess) return nullptr;
  (void)StreamWriteValue(side, done_word_, ready_value_);
  return side;
}

void CudaGradients::GiveUpRelease() {
  // The side stream may share a hardware queue with the stream that waits (CUDA has
  // CUDA_DEVICE_MAX_CONNECTIONS of them, 8 by default; with 1 it always does): then its write
  // waits behind that wait, for good.
  std::fprintf(stderr,
               "gstab: could not release them (the write waits behind theirs in a hardware queue "
               "they share; CUDA_DEVICE_MAX_CONNECTIONS=1 makes that certain); leaving them "
               "waiting and the results mapped\n");
  streams_stuck_ = true;
}

bool CudaGradients::WriteDoneHere() {
  cudaStream_t side = QueueDoneWrite();
  const bool released =
      side != nullptr && WaitDone([side] { return cudaStreamQuery(side); }, kOwnWriteWait);
  if (released) cudaStreamDestroy(side);
  ClearStaleCudaError();
  if (!released) GiveUpRelease();
  return released;
}

void CudaGradients::ReleaseIfWaiting() {
  if (done_word_ == nullptr || done_passed_ == nullptr || streams_stuck_) return;
  const DeviceScope scope(device_);
  if (scope.status() != cudaSuccess) return ClearStaleCudaError();
  if (release_stream_ != nullptr) {  // a write queued earlier: landed, or stuck
    if (cudaStreamQuery(release_stream_) != cudaErrorNotReady) {
      cudaStreamDestroy(release_stream_);
      release_stream_ = nullptr;
    } else if (absl::Now() - release_queued_ > kOwnWriteWait) {
      GiveUpRelease();
    }
  } else if (cudaEventQuery(done_passed_) == cudaErrorNotReady) {
    if (!released_for_lost_daemon_) {
      std::fprintf(stderr,
                   "gstab: gstabd is gone (its session is unknown to the gstabd there now, or "
                   "none answers) with a step of this process still on the GPU; releasing the "
                   "streams that wait for it (that step's gradients may be partly "
                   "stabilized)\n");
      released_for_lost_daemon_ = true;
    }
    release_stream_ = QueueDoneWrite();
    release_queued_ = absl::Now();
  }
  ClearStaleCudaError();
}

void CudaGradients::ReleaseForLostDaemon(uint64_t client_id) {
  // Never waits (it runs on a keep-alive thread, under the process's registration lock): a
  // write is queued at one call, and looked at again at the next.
  absl::MutexLock registered(&registered_mu);  // the object stays while this runs
  auto it = Registered().find(client_id);
  if (it == Registered().end()) return;
  CudaGradients* g = it->second;
  g->daemon_lost_ = true;                   // for CloseResults, should this try not act
  if (!g->handshake_mu_.TryLock()) return;  // a Step or a close: asked again soon
  g->ReleaseIfWaiting();
  g->handshake_mu_.Unlock();
}

void CudaGradients::CloseResults() {
  absl::MutexLock lock(&handshake_mu_);
  if (results_ != nullptr && !streams_stuck_) {
    const DeviceScope scope(device_);
    // gstabd writes `done` for every step it accepted; if it died first, nothing will, and the
    // wait for the device below would never end. Past done_wait_ the done word is written here,
    // from a stream of its own, so that this process's streams go on (that step's gradients
    // may be partly stabilized).
    // Told that gstabd is gone (its release may be queued already): a short wait for that.
    const absl::Duration wait =
        daemon_lost_.exchange(false) ? std::min(done_wait_, kOwnWriteWait) : done_wait_;
    if (done_passed_ != nullptr &&
        !WaitDone([this]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return cudaEventQuery(done_passed_); },
                  wait)) {
      std::fprintf(stderr,
                   "gstab: gstabd did not finish the last step within %lld s (has it stopped?); "
                   "releasing the streams that wait for it\n",
                   static_cast<long long>(absl::ToInt64Seconds(wait)));
      WriteDoneHere();
    }
    if (release_stream_ != nullptr) {  // destroyed once its write is done
      cudaStreamDestroy(release_stream_);
      release_stream_ = nullptr;
    }
    if (!streams_stuck_) {  // else neither waited for nor closed: either would wait for good
      // Reads of the results may still be queued on the caller's streams.
      cudaDeviceSynchronize();
      cudaIpcCloseMemHandle(results_);
      (void)cudaGetLastError();  // a failed close must not surface in the caller's next check
    }
  }
  results_ = nullptr;
  results_bytes_ = 0;
  registered_through_ = 0;
  ready_word_ = nullptr;
  done_word_ = nullptr;
}

absl::Status CudaGradients::Register(Client* client) {
  absl::Status s;
  try {
    s = RegisterThrough(client);
  } catch (...) {  // out of memory, after gstabd may have taken it
    client->RegistrationFailed(absl::Status());
    throw;
  }
  if (!s.ok()) client->RegistrationFailed(s);
  return s;
}

absl::Status CudaGradients::RegisterThrough(Client* client) {
  // gstabd frees the results buffer of a registration it replaces: let go of it first, this
  // object's and that of another registered through the same client.
  CudaGradients* replaced = nullptr;
  {
    absl::MutexLock lock(&registered_mu);
    auto it = Registered().find(client->id());
    if (it != Registered().end() && it->second != this) {
      replaced = it->second;
      ++replaced->pins_;  // not destroyed before its close below is done
    }
  }
  if (replaced != nullptr) {
    replaced->CloseResults();
    absl::MutexLock lock(&registered_mu);
    --replaced->pins_;
  }
  CloseResults();
  groups_.clear();  // the closed buffer's
  if (absl::MutexLock lock(&handshake_mu_); streams_stuck_) {
    return absl::FailedPreconditionError(
        "this process's streams still wait for the done word of a step gstabd never finished, "
        "and writing it here did not get through (see the message above); steps on them would "
        "never run: restart the worker");
  }
  done_wait_ =
      std::max(kMinDoneWait, 2 * absl::Milliseconds(client->attach_response().step_timeout_ms()));
  v1::RegisterBuffersResponse response;
  uint64_t registration = 0;
  if (absl::Status s = client->RegisterBuffers(request_, &response, &registration); !s.ok()) {
    return s;
  }
  // A registration that fails from here on leaves no results buffer or group names to read.
  absl::Cleanup unmap = [this] { CloseResults(); };
  if (response.results_handle().size() != sizeof(cudaIpcMemHandle_t)) {
    return absl::InternalError(absl::StrCat("gstabd answered with a ",
                                            response.results_handle().size(),
                                            "-byte results handle; expected a CUDA IPC handle"));
  }
  cudaIpcMemHandle_t h;
  std::memcpy(&h, response.results_handle().data(), sizeof h);
  const DeviceScope scope(device_);
  RETURN_IF_CUDA_ERROR(scope.status());
  void* p = nullptr;
  RETURN_IF_CUDA_ERROR(cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess));
  results_ = static_cast<StepResultsHeader*>(p);
  results_bytes_ = response.results_bytes();
  for (uint64_t offset : {response.ready_offset(), response.done_offset()}) {
    if (offset < results_bytes_ || offset % 4 != 0) {
      return absl::InternalError(absl::StrCat("gstabd answered with a handshake word at offset ",
                                              offset, " of a ", results_bytes_,
                                              "-byte results buffer: not a word after it"));
    }
  }
  ready_word_ = reinterpret_cast<uint32_t*>(static_cast<char*>(p) + response.ready_offset());
  {
    absl::MutexLock lock(&handshake_mu_);
    done_word_ = reinterpret_cast<uint32_t*>(static_cast<char*>(p) + response.done_offset());
    ready_value_ = 0;  // a new buffer's ready word starts at 0
  }
  std::move(unmap).Cancel();
  groups_.assign(response.groups().begin(), response.groups().end());
  // A gstabd found gone releases the streams waiting for its steps (see the header).
  Client::SetDaemonLostHandler(&CudaGradients::ReleaseForLostDaemon);
  absl::MutexLock lock(&registered_mu);
  // Registered through this client only now: another client it was registered through before
  // no longer has it (a registration there must not close this one's mapping).
  Forget(this);
  Registered()[client->id()] = this;
  registered_through_ = client->id();
  registration_ = registration;
  return absl::OkStatus();
}

absl::StatusOr<v1::StepResponse> CudaGradients::Step(Client* client, uint64_t step,
                                                     cudaStream_t stream) {
  if (ready_word_ == nullptr) {
    return absl::FailedPreconditionError(
        "these buffers are not registered: Register them first (another CudaGradients "
        "registered through the same client replaces them)");
  }
  if (client->id() != registered_through_) {
    return absl::FailedPreconditionError(
        "these buffers were registered through another client: step them with the client that "
        "registered them (its session's registration is what gstabd stabilizes)");
  }
  if (client->Registration() != registration_) {
    // gstabd has freed their results buffer: a ready word written there would go nowhere, and
    // the stream would wait for good for a done word nobody writes.
    return absl::FailedPreconditionError(
        "these buffers are no longer this client's registration: another registration through "
        "it (host-memory gradients, say), or an attach or a detach since, replaced them; "
        "register them again (attached) before Step");
  }
  const DeviceScope scope(device_);
  RETURN_IF_CUDA_ERROR(scope.status());
  uint32_t ready;
  {
    absl::MutexLock lock(&handshake_mu_);
    ready_value_ = ready_value_ == UINT32_MAX ? 1 : ready_value_ + 1;  // never 0 (absent)
    ready = ready_value_;
  }
  if (absl::Status s = StreamWriteValue(stream, ready_word_, ready); !s.ok()) return s;
  absl::StatusOr<v1::StepResponse> r = client->Step(step, ready);
  // A step gstabd failed after queuing part of it: its kernels may still run on the gradients,
  // and gstabd writes the done word behind them, which the stream waits for as for a step taken.
  if (!r.ok() && !DoneWritten(r.status())) return r;
  absl::MutexLock lock(&handshake_mu_);
  if (absl::Status s = StreamWaitValue(stream, done_word_, ready); !s.ok()) return s;
  if (done_passed_ == nullptr) {
    RETURN_IF_CUDA_ERROR(cudaEventCreateWithFlags(&done_passed_, cudaEventDisableTiming));
  }
  RETURN_IF_CUDA_ERROR(cudaEventRecord(done_passed_, stream));
  return r;
}

}  // namespace gstab
