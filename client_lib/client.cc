#include "client_lib/client.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <optional>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/done_written.h"
#include "common/environment.h"
#include "common/step_progress.h"

namespace gstab {
namespace {

uint64_t NextClientId() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1);
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  absl::Status s(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  if (DetailsSayDoneWritten(status.error_details())) MarkDoneWritten(&s);
  return s;
}

Client::Client(std::shared_ptr<grpc::Channel> channel, std::string target)
    : id_(NextClientId()),
      owner_(getpid()),
      channel_(std::move(channel)),
      target_(std::move(target)),
      stub_(v1::Stabilizer::NewStub(channel_)) {
  // Checked by Connect, which makes clients.
  if (absl::StatusOr<std::optional<int>> seconds = CallTimeoutFromEnvironment();
      seconds.ok() && seconds->has_value()) {
    call_timeout_ = absl::Seconds(**seconds);
    call_timeout_set_ = true;
  }
}

thread_local grpc::Status Client::last_answer_;
thread_local bool Client::last_unanswered_ = false;

namespace {
// Marks a Step's DATA_LOSS as unanswered (Client::StepUnanswered).
constexpr char kUnansweredPayload[] = "gstab.dev/step-unanswered";
}  // namespace

Client::~Client() {
  if (getpid() != owner_) {
    // A forked child's copy: its keep-alive thread is the parent's and is not in this process,
    // so it is neither joined (that would wait for good) nor destroyed (std::terminate).
    if (keepalive_ != nullptr) new std::thread(std::move(keepalive_.release()->thread));
    // Nor are its gRPC objects destroyed, which would call into a gRPC that did not come
    // through the fork (and may wait for the parent's threads).
    (void)stub_.release();
    new std::shared_ptr<grpc::Channel>(std::move(channel_));
    return;
  }
  StopKeepAlive();
  if (!session().empty()) {
    // As the Python client does at exit: gstabd lets go of the worker now, not a lease later
    // (its job's other local workers stop waiting for it, and `gstabctl forget` works at once).
    // Briefly: a process on its way out does not wait on a frozen gstabd. But longer than
    // gstabd's own wait (2 s) for a GPU worker's mappings to close, so that CUDA gradients
    // destroyed after this are not freed under a mapping gstabd still has.
    v1::DetachRequest request;
    request.set_session(session());
    (void)Call(&v1::Stabilizer::Stub::Detach, request, absl::Seconds(3));
  }
}

namespace {

// The page of `offset` in shared object `shm_name`, mapped to read the word there; null when it
// cannot be.
std::shared_ptr<const uint64_t> MapProgressWord(const std::string& shm_name, uint64_t offset) {
  const int fd = shm_open(shm_name.c_str(), O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0) return nullptr;
  const auto page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t start = offset / page * page;
  void* mapped = mmap(nullptr, page, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(start));
  close(fd);
  if (mapped == MAP_FAILED) return nullptr;
  return std::shared_ptr<const uint64_t>(
      reinterpret_cast<const uint64_t*>(static_cast<const char*>(mapped) + (offset - start)),
      [mapped, page](const uint64_t*) { munmap(mapped, page); });
}

}  // namespace

absl::Status Client::Attach(const AttachOptions& options) {
  absl::MutexLock attaching(&attach_mu_);
  v1::AttachRequest request;
  request.set_job(options.job);
  request.set_rank(options.rank);
  request.set_world_size(options.world_size);
  request.set_local_rank(options.local_rank);
  request.set_local_world_size(options.local_world_size);
  *request.mutable_config() = options.config;
  request.set_observer(options.observer);
  request.set_node_rank(options.node_rank);
  request.set_node_count(options.node_count);
  request.set_rendezvous(options.rendezvous);
  if (options.node_count > 1 && options.rendezvous.empty()) {
    const char* env = std::getenv("GSTAB_RENDEZVOUS");
    std::string blob;
    if (env == nullptr) {
      return absl::InvalidArgumentError(
          "node_count > 1 needs a rendezvous: pass the blob, or set GSTAB_RENDEZVOUS to it in "
          "base64");
    }
    if (!absl::Base64Unescape(env, &blob) || blob.empty()) {
      return absl::InvalidArgumentError(
          "GSTAB_RENDEZVOUS is not a rendezvous blob in base64 (as gstabctl rendezvous prints "
          "it): check how the job passes it to its workers");
    }
    request.set_rendezvous(blob);
  }
  // Before the attach: one that gstabd takes may already have ended the earlier session (the
  // same job and local rank), and a session without its keep-alive would lapse unseen.
  absl::StatusOr<std::unique_ptr<KeepAlive>> keepalive = StartKeepAlive();
  if (!keepalive.ok()) return keepalive.status();
  // Also should the call throw (out of memory: Guarded reports it): a joinable thread's
  // destruction would end the process.
  absl::Cleanup unused = [&] { StopKeepAlive(keepalive->get()); };
  absl::StatusOr<v1::AttachResponse> response = Call(&v1::Stabilizer::Stub::Attach, request);
  if (!response.ok()) return response.status();
  // The gstabd that holds the new session, asked at once and briefly: its keep-alive's first
  // look could come after a restart, and Attach compares it with the earlier session's below.
  const absl::StatusOr<v1::IdentifyResponse> holder =
      Call(&v1::Stabilizer::Stub::Identify, v1::IdentifyRequest(), absl::Seconds(5));
  (*keepalive)->session = response->session();
  (*keepalive)->period = absl::Milliseconds(std::max<uint64_t>(response->lease_ms(), 3) / 3);
  if (holder.ok()) {
    absl::MutexLock lock(&(*keepalive)->mu);
    (*keepalive)->holder = holder->instance();
  }
  (*keepalive)->start.Notify();
  std::move(unused).Cancel();
  std::string earlier_holder;  // the earlier session's gstabd, where its keep-alive knew it
  if (keepalive_ != nullptr) {
    absl::MutexLock lock(&keepalive_->mu);
    earlier_holder = keepalive_->holder;
  }
  StopKeepAlive();
  keepalive_ = *std::move(keepalive);
  std::string previous;
  {
    absl::MutexLock lock(&session_mu_);
    previous = attached_.session();
    attached_ = *std::move(response);
    if (!call_timeout_set_) {
      call_timeout_ =
          std::max(absl::Minutes(5),
                   8 * absl::Milliseconds(attached_.step_timeout_ms()) + absl::Seconds(10));
    }
  }
  {
    absl::MutexLock lock(&registration_mu_);
    registration_failed_ = false;  // the new session has none: gstabd says so
    registration_failure_.clear();
    ++registration_;  // nor any registration of the earlier one
  }
  // The earlier session's gstabd replaced by the one that answered (restarted within a keep-
  // alive period, before the earlier keep-alive saw it go): told now, as that keep-alive would
  // have, so that a step the gone gstabd held on this process's streams is released, not waited
  // for (a CUDA registration's close waits minutes for it).
  if (!earlier_holder.empty() && holder.ok() && !holder->instance().empty() &&
      holder->instance() != earlier_holder) {
    TellDaemonLost();
    return absl::OkStatus();  // the earlier session went with its gstabd
  }
  // The earlier session ends: its registration would otherwise stay until its lease ran out,
  // and its job's other local workers' steps would wait for it. gstabd has already ended it
  // when this attach was of the same job and local rank (the detach is then refused: ignored).
  if (!previous.empty() && previous != session()) {
    v1::DetachRequest detach;
    detach.set_session(previous);
    (void)Call(&v1::Stabilizer::Stub::Detach, detach, absl::Seconds(10));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Client::CreateRendezvous(const std::string& job, uint32_t node_count,
                                                     bool cuda) {
  v1::CreateRendezvousRequest request;
  request.set_job(job);
  request.set_node_count(node_count);
  request.set_cuda(cuda);
  absl::StatusOr<v1::CreateRendezvousResponse> r =
      Call(&v1::Stabilizer::Stub::CreateRendezvous, request);
  if (!r.ok()) return r.status();
  return r->rendezvous();
}

absl::StatusOr<v1::IdentifyResponse> Client::Identify() {
  return Call(&v1::Stabilizer::Stub::Identify, v1::IdentifyRequest());
}

absl::Status Client::Register(const GradientArena& arena) {
  if (!arena.allocated()) {  // its layout was never checked either (a dtype, its size)
    absl::Status s = absl::FailedPreconditionError(
        "the arena is not allocated: Allocate() it (and check that it succeeded) first");
    RegistrationFailed(s);  // as any refused registration (and the C ABI's) ends the earlier one
    return s;
  }
  const v1::RegisterBuffersRequest request = arena.RegistrationRequest();
  if (absl::Status s = RegisterBuffers(request); !s.ok()) return s;
  // Without it, a step cut off is taken as possibly scaled in part (DATA_LOSS).
  std::shared_ptr<const uint64_t> word =
      MapProgressWord(arena.shm_name(), request.progress().offset());
  absl::MutexLock lock(&registration_mu_);
  progress_ = {std::move(word), false};
  return absl::OkStatus();
}

absl::Status Client::RegisterBuffers(v1::RegisterBuffersRequest request,
                                     v1::RegisterBuffersResponse* response,
                                     uint64_t* registration) {
  if (registration != nullptr) *registration = 0;
  // Failed until it succeeds: this registration replaces the earlier one, and one cut short
  // (by an exception, out of memory) may have reached gstabd. Its number is taken now: should
  // another thread attach meanwhile (which may end the session gstabd takes it in), the number
  // has moved on by the time it succeeds, and its CUDA steps are refused.
  {
    absl::MutexLock lock(&registration_mu_);
    ++registering_;  // first: a Step that finds the registration failed below is told why
  }
  const uint64_t number = RegistrationFailed(absl::Status());
  absl::Cleanup done = [this] {
    absl::MutexLock lock(&registration_mu_);
    --registering_;
  };
  if (absl::Status s = NeedSession(); !s.ok()) {
    RegistrationFailed(s);
    return s;
  }
  request.set_session(session());
  absl::StatusOr<v1::RegisterBuffersResponse> r =
      Call(&v1::Stabilizer::Stub::RegisterBuffers, request);
  if (!r.ok()) {
    RegistrationFailed(r.status());
    return r.status();
  }
  if (response != nullptr) *response = *std::move(r);
  absl::MutexLock lock(&registration_mu_);
  registration_failed_ = false;
  registration_failure_.clear();
  if (registration != nullptr) *registration = number;
  return absl::OkStatus();
}

uint64_t Client::RegistrationFailed(const absl::Status& why) noexcept {
  absl::MutexLock lock(&registration_mu_);
  progress_ = ProgressWord();
  const uint64_t number = ++registration_;
  registration_failed_ = true;
  try {
    registration_failure_ = why.ok() ? "it did not complete" : why.ToString();
  } catch (...) {
    registration_failure_.clear();  // out of memory: Step says so
  }
  return number;
}

absl::StatusOr<v1::StepResponse> Client::Step(uint64_t step, uint32_t ready_value) {
  if (absl::Status s = NeedSession(); !s.ok()) return s;
  ProgressWord progress;  // this step's view of it: a registration of another thread may replace it
  {
    absl::MutexLock lock(&registration_mu_);
    progress = progress_;
    if (registration_failed_ && registering_ > 0) {
      return absl::FailedPreconditionError(
          "a registration through this client is under way (on another thread), replacing the "
          "earlier one: step once it has returned");
    }
    if (registration_failed_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the last registration through this client failed (",
          registration_failure_.empty() ? "out of memory" : registration_failure_,
          "), and its earlier one went with it: register the gradients again before Step"));
    }
  }
  v1::StepRequest request;
  request.set_session(session());
  request.set_step(step);
  request.set_ready_value(ready_value);
  absl::StatusOr<v1::StepResponse> response = Call(&v1::Stabilizer::Stub::Step, request);
  if (response.ok() && progress.word != nullptr) {
    // A gstabd that does not mark it (an older one) leaves a word that says nothing.
    const bool marked = __atomic_load_n(progress.word.get(), __ATOMIC_SEQ_CST) == ScaledMark(step);
    absl::MutexLock lock(&registration_mu_);
    if (progress_.word == progress.word)
      progress_ = marked ? ProgressWord{progress.word, true} : ProgressWord();
  }
  if (!response.ok() && last_unanswered_) {
    absl::Status lost = absl::DataLossError(
        absl::StrCat(response.status().message(), "; it may still scale step ", step,
                     "'s gradients when it runs again: skip this step (zero them) rather than "
                     "step them again, then attach and register again once gstabd serves"));
    lost.SetPayload(kUnansweredPayload, absl::Cord());
    return lost;
  }
  if (response.ok() || !CutOff(last_answer_)) return response;
  return StepCutOff(step, response.status(), progress);
}

bool Client::StepUnanswered(const absl::Status& step_status) {
  return absl::IsDataLoss(step_status) && step_status.GetPayload(kUnansweredPayload).has_value();
}

absl::Status Client::Detach() {
  absl::MutexLock attaching(&attach_mu_);
  StopKeepAlive();
  if (absl::Status s = NeedSession(); !s.ok()) return s;
  v1::DetachRequest request;
  request.set_session(session());
  // Briefly: gstabd answers a detach at once (its wait for a GPU worker's mappings is bounded
  // by 2 s), and a process on its way out must not wait minutes for a frozen gstabd.
  absl::Status s = Call(&v1::Stabilizer::Stub::Detach, request, absl::Seconds(10)).status();
  {
    // Its registration goes with it (gstabd frees a CUDA registration's results buffer): no
    // step of it may write there any more.
    absl::MutexLock lock(&registration_mu_);
    ++registration_;
  }
  absl::MutexLock lock(&session_mu_);
  attached_.clear_session();  // gone either way: gstabd ends it, or its lease runs out
  return s;
}

absl::Status Client::NeedSession() const {
  if (!session().empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      "this client is not attached to a job: attach first (after a detach, attach again)");
}

absl::StatusOr<v1::GetStatsResponse> Client::GetStats() {
  if (absl::Status s = NeedSession(); !s.ok()) return s;
  v1::GetStatsRequest request;
  request.set_session(session());
  return Call(&v1::Stabilizer::Stub::GetStats, request);
}

absl::StatusOr<v1::UpdateConfigResponse> Client::UpdateConfig(const v1::PolicyConfig& update) {
  if (absl::Status s = NeedSession(); !s.ok()) return s;
  v1::UpdateConfigRequest request;
  request.set_session(session());
  *request.mutable_config() = update;
  return Call(&v1::Stabilizer::Stub::UpdateConfig, request);
}

absl::StatusOr<v1::ListJobsResponse> Client::ListJobs(const v1::ListJobsRequest& request) {
  return Call(&v1::Stabilizer::Stub::ListJobs, request);
}

absl::StatusOr<v1::ForgetJobResponse> Client::ForgetJob(const std::string& job) {
  v1::ForgetJobRequest request;
  request.set_job(job);
  return Call(&v1::Stabilizer::Stub::ForgetJob, request);
}

absl::StatusOr<std::string> Client::ExportState() {
  if (absl::Status s = NeedSession(); !s.ok()) return s;
  v1::ExportStateRequest request;
  request.set_session(session());
  absl::StatusOr<v1::ExportStateResponse> r = Call(&v1::Stabilizer::Stub::ExportState, request);
  if (!r.ok()) return r.status();
  return r->state();
}

absl::Status Client::ImportState(const std::string& state, v1::ImportStateResponse* response,
                                 bool keep_config) {
  if (absl::Status s = NeedSession(); !s.ok()) return s;
  v1::ImportStateRequest request;
  request.set_session(session());
  request.set_state(state);
  request.set_keep_config(keep_config);
  absl::StatusOr<v1::ImportStateResponse> r = Call(&v1::Stabilizer::Stub::ImportState, request);
  if (r.ok() && response != nullptr) *response = *std::move(r);
  return r.status();
}

}  // namespace gstab
