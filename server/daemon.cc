#include "server/daemon.h"

#include <malloc.h>
#include <sys/mman.h>

#include <algorithm>
#include <thread>
#include <vector>

#include "common/monotonic_clock.h"
#include "common/shm_names.h"
#include "core/config.h"
#include "glog/logging.h"
#include "server/gloo_collective.h"
#include "server/grpc_status.h"
#include "server/state_codec.h"
#ifdef GSTAB_WITH_CUDA
#include "server/cuda/cuda_backend.h"
#endif

namespace gstab {
namespace {

// How long Detach (and a registration replacing one of device memory) waits for gstabd's
// mappings of the worker's gradients to close.
constexpr absl::Duration kDetachReleaseWait = absl::Seconds(2);

int DefaultThreads(int requested) {
  if (requested > 0) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

}  // namespace

Daemon::Daemon(const DaemonOptions& options, Observer* observer)
    : options_(options),
      caps_(options.caps),
      observer_(observer),
      executor_(DefaultThreads(options.cpu_threads)),
      registry_(options.max_mappings, options.max_mappings_per_owner),
      store_(options.state_dir),
      store_calls_(std::make_shared<StoreCalls>()) {
#ifdef GSTAB_WITH_CUDA
  if (options.cuda) {
    device_memory_ = MakeCudaDeviceMemory();
    gpu_.make_pipeline = MakeCudaPipelineFactory();
    gpu_.new_nccl_id = NewNcclUniqueId;
    gpu_.timeout = options.step_timeout;
    gpu_.nccl_one_rank = options.nccl_one_rank;
  }
#endif
  caps_.cuda_ipc = device_memory_ != nullptr;
  if (observer_ != nullptr) observer_->SetShmMappings(0, options.max_mappings);
}

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Create(const DaemonOptions& options,
                                                       Observer* observer) {
  std::unique_ptr<Daemon> d(new Daemon(options, observer));
  if (absl::Status s = d->store_.Init(); !s.ok()) return s;
  absl::StatusOr<std::vector<StateStore::Stored>> found = d->store_.LoadAll();
  if (!found.ok()) return found.status();
  absl::MutexLock lock(&d->mu_);
  for (StateStore::Stored& stored : *found) {
    LOG(INFO) << "found checkpoint of job '" << stored.state.job() << "' at step "
              << stored.state.last_step();
    std::string name = stored.state.job();
    Checkpointed checkpoint(std::move(stored.state), stored.saved, /*saved_to_disk=*/true);
    checkpoint.groups = stored.groups;  // the groups stayed on disk
    d->checkpoints_.insert_or_assign(name, std::move(checkpoint));
  }
  found->clear();
  // Each checkpoint was read whole, and its groups freed again (they stay on disk): give that
  // back, which the allocator would otherwise keep.
  malloc_trim(0);
  return d;
}

void Daemon::SetPeerAddress(std::string address) {
  absl::MutexLock lock(&mu_);
  peer_address_ = std::move(address);
}

void Daemon::Remove(const std::optional<Removal>& removal) {
  if (!removal.has_value()) return;
  const std::vector<ShmObject> objects =
      removal->job->RemoveWorker(removal->local_rank, removal->worker_gone, removal->session,
                                 removal->attach, removal->expired);
  // A worker silent for a whole lease has most likely died, and a dead worker cannot unlink
  // its shared memory. Objects of this pid namespace are removed once their creator is gone
  // (RemoveStaleShmObjects); for another namespace's (a container's) gstabd cannot see the
  // creator, so it removes them now. A worker that was only frozen keeps its mapping, and is
  // told to allocate anew when it registers them again. A name under which another object was
  // made since (a worker of that name's, restarted) is left to it, and so is an object another
  // registration still maps (slices of one object registered by several ranks or jobs: its
  // living workers register it again by name), until nothing does (RemoveKeptObjects).
  if (removal->expired) {
    const std::string whose =
        absl::StrCat("job '", removal->job->name(), "' local rank ", removal->local_rank);
    for (const ShmObject& object : objects) {
      if (CreatedInThisPidNamespace(object.name)) continue;
      if (RemoveExpiredObject(object, whose)) continue;
      LOG(INFO) << "kept shared memory '" << object.name << "' of " << whose
                << ", whose lease expired, while another registration holds it";
      absl::MutexLock lock(&mu_);
      // Once an object: several ranks' slices of it, or a worker that expired again.
      const bool known =
          std::any_of(kept_objects_.begin(), kept_objects_.end(), [&](const KeptObject& k) {
            return k.object.device == object.device && k.object.inode == object.inode;
          });
      if (!known) kept_objects_.push_back({object, whose});
    }
  }
  ReportWorkers(removal->job);
  absl::MutexLock lock(&mu_);
  Unpend(removal->job);
}

bool Daemon::RemoveExpiredObject(const ShmObject& object, const std::string& whose) {
  std::string error;
  const std::optional<ShmRemoval> removal = registry_.RemoveUnlessMapped(object, &error);
  if (!removal.has_value()) return false;
  switch (*removal) {
    case ShmRemoval::kRemoved:
      LOG(INFO) << "removed shared memory '" << object.name << "' of " << whose
                << " (its lease expired)";
      break;
    case ShmRemoval::kReplaced:
      LOG(INFO) << "kept shared memory '" << object.name << "' of " << whose
                << ", whose lease expired: another object was made under its name since";
      break;
    case ShmRemoval::kFailed:
      LOG(WARNING) << "cannot remove shared memory '" << object.name << "' of " << whose
                   << ", whose lease expired: " << error;
      break;
    case ShmRemoval::kAlreadyGone:
      break;
  }
  return true;
}

void Daemon::RemoveKeptObjects() {
  std::vector<KeptObject> kept;
  {
    absl::MutexLock lock(&mu_);
    if (kept_objects_.empty()) return;
    kept.swap(kept_objects_);
  }
  std::vector<KeptObject> still;
  for (KeptObject& k : kept) {
    if (!RemoveExpiredObject(k.object, k.whose)) still.push_back(std::move(k));
  }
  absl::MutexLock lock(&mu_);
  for (KeptObject& k : still) kept_objects_.push_back(std::move(k));
}

void Daemon::Unpend(const std::shared_ptr<Job>& job) {
  auto it = pending_.find(job->name());
  if (--it->second == 0) pending_.erase(it);
  if (!InUse(job)) idle_since_.emplace(job->name(), MonotonicNow());
}

void Daemon::ReportWorkers(const std::shared_ptr<Job>& job) {
  if (observer_ == nullptr) return;
  absl::MutexLock job_report(&job->gauge_report_mu());  // this job's reports in order
  // The job's lock, under neither of the daemon's: a job closing its GPU pipelines holds it for
  // a while, which must hold no other job's reports (nor the housekeeping's).
  const uint64_t bytes = job->RegisteredBytes();
  const bool diverging = job->Diverging();
  absl::MutexLock report(&report_mu_);
  uint32_t workers = 0;
  {
    absl::MutexLock lock(&mu_);
    auto held = jobs_.find(job->name());
    if (held == jobs_.end() || held->second != job) return;  // retired: its series are gone
    workers = WorkersOf(job);
  }
  observer_->SetWorkers(job->name(), workers, bytes);
  observer_->Seed(job->name(), diverging);
  observer_->SetShmMappings(registry_.LiveMappings(), options_.max_mappings);
}

void Daemon::ReportShmMappings() {
  if (observer_ == nullptr) return;
  // Read and set under report_mu_, as ReportWorkers does: an older count read here is not set
  // after the newer one an attach or registration reports.
  absl::MutexLock report(&report_mu_);
  observer_->SetShmMappings(registry_.LiveMappings(), options_.max_mappings);
}

Job::StepCallback Daemon::StepCallbackFor(const std::string& job) {
  if (observer_ == nullptr) return nullptr;
  return [observer = observer_, job](const v1::StepResponse& r, std::optional<absl::Duration> d) {
    observer->OnStep(job, r, d);
  };
}

absl::Status Daemon::RegisterBuffers(const v1::RegisterBuffersRequest& request,
                                     v1::RegisterBuffersResponse* response,
                                     std::optional<uid_t> peer_uid) {
  absl::StatusOr<Session> session = UseAsWorker(request.session());
  if (!session.ok()) return session.status();
  const std::optional<int> replaced_device = session->job->CudaDevice(session->local_rank);
  absl::Status s = Register(*session, request, response, peer_uid);
  // The worker's client has let go of its earlier registration whatever the outcome, so a
  // refused one leaves gstabd none either, rather than scaling memory the worker has moved on
  // from.
  if (!s.ok()) session->job->DropRegistration(session->local_rank, session->id, s);
  // The worker may free the replaced gradients once this answers (Detach's case).
  if (device_memory_ != nullptr && replaced_device.has_value()) {
    device_memory_->AwaitClosedMappings(*replaced_device, kDetachReleaseWait);
  }
  ReportWorkers(session->job);
  return ReplacedOr(request.session(), s);
}

absl::Status Daemon::Register(const Session& session, const v1::RegisterBuffersRequest& request,
                              v1::RegisterBuffersResponse* response,
                              std::optional<uid_t> peer_uid) {
  absl::StatusOr<RegistrationPlan> plan = ValidateRegistration(request, caps_);
  if (!plan.ok()) return plan.status();
  absl::StatusOr<std::shared_ptr<void>> reserved = ReserveTensors(session, plan->tensors.size());
  if (!reserved.ok()) return reserved.status();
  absl::StatusOr<MappedRegistration> mapped =
      MapRegistration(*std::move(plan), &registry_, device_memory_.get(), peer_uid);
  if (!mapped.ok()) return mapped.status();
  if (absl::Status s = ClaimMemory(session.job->name(), &claims_, &*mapped); !s.ok()) return s;
  // A session that ends meanwhile is handled by the job: its removal either removes this
  // registration (when it comes after) or has it refused (when it came before).
  return session.job->Register(session.local_rank, *std::move(mapped), response, session.id);
}

absl::Status Daemon::Step(const v1::StepRequest& request, v1::StepResponse* response,
                          absl::Time call_deadline) {
  if (absl::Status s = CheckStepNumber(request.step()); !s.ok()) return s;
  absl::StatusOr<Session> session = UseAsWorker(request.session());
  if (!session.ok()) return session.status();
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) {
      return StoppingError("gstabd is shutting down; attach again after it restarts");
    }
    ++steps_in_flight_;
    ++pending_[session->job->name()];  // not retired while its step runs
  }
  absl::Status status =
      session->job->Step(session->local_rank, request.step(), options_.step_timeout, response,
                         request.ready_value(), session->id, call_deadline);
  {
    absl::MutexLock lock(&mu_);
    --steps_in_flight_;
    Unpend(session->job);
  }
  return ReplacedOr(request.session(), status);
}

absl::Status Daemon::KeepAlive(const v1::KeepAliveRequest& request) {
  return Use(request.session()).status();
}

absl::Status Daemon::Detach(const v1::DetachRequest& request) {
  std::optional<Removal> removal;
  {
    absl::MutexLock lock(&mu_);
    if (sessions_.count(request.session()) == 0) {
      if (absl::Status replaced = Replaced(request.session()); !replaced.ok()) return replaced;
      return absl::UnauthenticatedError(
          "unknown or expired session: nothing to detach (gstabd ended it already: its lease ran "
          "out, or gstabd restarted)");
    }
    removal = DropSession(request.session(), "detached", /*worker_gone=*/false);
  }
  const std::optional<int> device =
      removal.has_value() ? removal->job->CudaDevice(removal->local_rank) : std::nullopt;
  Remove(removal);
  // The worker may free its gradients once Detach answers, and CUDA leaves freeing memory that
  // another process still has mapped undefined: close gstabd's mappings of them first (they
  // are closed on a background thread, since a close can wait for the device), bounded.
  if (device_memory_ != nullptr && device.has_value()) {
    device_memory_->AwaitClosedMappings(*device, kDetachReleaseWait);
  }
  // Host memory (also after a CUDA registration the worker replaced by one of host memory): a
  // round that took the worker's Step (one its call gave up on) may still scale its gradients.
  if (removal.has_value()) removal->job->AwaitRoundOf(removal->local_rank, kDetachReleaseWait);
  return absl::OkStatus();
}

void Daemon::ExpireSessions(absl::Time now) {
  std::vector<std::string> expired;
  std::vector<std::optional<Removal>> removals;
  {
    absl::MutexLock lock(&mu_);
    // A stopping gstabd answers no keep-alives: its workers are alive, and a stop held up past
    // a lease (a step in an exchange with other nodes) must not release their buffers, nor
    // unlink their shared memory.
    if (shutting_down_) return;
    for (const auto& [token, s] : sessions_) {
      if (now - s.last_seen > options_.lease) expired.push_back(token);
    }
    for (const std::string& token : expired) {
      const Session& s = sessions_[token];
      if (s.observer) {
        LOG(WARNING) << "observer session of job '" << s.job->name() << "' expired";
      } else {
        LOG(WARNING) << "session of job '" << s.job->name() << "' local rank " << s.local_rank
                     << " expired; releasing its buffers";
      }
      removals.push_back(DropSession(token, "lease expired", /*worker_gone=*/true));
      if (removals.back().has_value()) removals.back()->expired = true;
    }
  }
  for (const std::optional<Removal>& removal : removals) Remove(removal);
  // A worker that died cannot unlink its shared objects; do it for it.
  if (!expired.empty()) RemoveStaleShmObjects();
  RemoveKeptObjects();
}

absl::Status Daemon::ListJobs(const v1::ListJobsRequest& request, v1::ListJobsResponse* response,
                              const std::optional<Principal>& caller) {
  if (caller.has_value()) {
    response->set_caller(caller->ToString());
    response->set_caller_scope(ScopeOf(*caller));
  }
  const uint32_t history = std::min(request.history(), 256u);
  // The jobs and their worker counts under mu_; each job's own state after, under its lock only
  // (a job closing its GPU pipelines holds that for a while).
  std::vector<std::pair<std::shared_ptr<Job>, uint32_t>> jobs;
  std::vector<v1::JobSummary> retired;
  {
    absl::MutexLock lock(&mu_);
    if (request.include_retired()) {
      for (const auto& [name, c] : checkpoints_) {
        v1::JobSummary& out = retired.emplace_back();
        out.set_job(name);
        absl::StatusOr<RuleParams> params = ResolveConfig(c.state.config());
        out.set_policy(params.ok() ? PolicyName(params->policy) : "");
        out.set_last_step(c.state.last_step());
        out.set_groups(c.groups);
        out.set_retired(true);
        SetOwnerIn(OwnerIn(c.state), &out);
      }
    }
    for (const auto& [name, job] : jobs_) {
      jobs.emplace_back(job, WorkersOf(job));
    }
  }
  for (const auto& [job, workers] : jobs) {
    v1::JobSummary* out = response->add_jobs();
    job->Summarize(out);  // not GetStats: its groups' statistics, up to 65,536 of them
    out->set_attached_workers(workers);
    out->set_node_rank(job->node_rank());
    out->set_node_count(job->node_count());
    SetOwnerIn(job->owner(), out);
    if (observer_ != nullptr) observer_->Summarize(job->name(), history, out);
  }
  for (v1::JobSummary& r : retired) *response->add_jobs() = std::move(r);
  return absl::OkStatus();
}

void Daemon::BeginShutdown() {
  std::vector<std::shared_ptr<Job>> jobs;
  {
    absl::MutexLock lock(&mu_);
    shutting_down_ = true;
    for (const auto& [name, job] : jobs_) jobs.push_back(job);
  }
  // Steps waiting for other local workers, whose Steps are refused from now on, answer now.
  for (const std::shared_ptr<Job>& job : jobs) job->BeginShutdown();
}

bool Daemon::DrainSteps(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return steps_in_flight_ == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

}  // namespace gstab
