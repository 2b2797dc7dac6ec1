// Daemon: how workers and observers join a job (Attach). The rendezvous across nodes is in
// daemon_rendezvous.cc.
#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "common/monotonic_clock.h"
#include "common/token.h"
#include "core/config.h"
#include "glog/logging.h"
#include "server/daemon.h"  // the class whose members these are
#include "server/grpc_status.h"

namespace gstab {
namespace {

// Local workers an Attach may claim (each costs state per job).
constexpr uint32_t kMaxLocalWorkers = 1024;

}  // namespace

absl::Status Daemon::AttachObserver(const v1::AttachRequest& request, v1::AttachResponse* response,
                                    const std::optional<Principal>& caller) {
  std::shared_ptr<Job> job;
  {
    absl::MutexLock lock(&mu_);
    AwaitNotRetiring(request.job());
    auto it = jobs_.find(request.job());
    if (it == jobs_.end()) {
      if (checkpoints_.count(request.job()) == 1) {
        return absl::NotFoundError(absl::StrCat(
            "job '", request.job(),
            "' is not held by this gstabd now (it was retired while idle, or its checkpoint was "
            "found in the state directory at start, and no worker has attached since); its "
            "statistics come back when a worker attaches, and its checkpoint file in the state "
            "directory (",
            request.job(), ".jobstate) holds what an export would give"));
      }
      return absl::NotFoundError(absl::StrCat(
          "no job '", request.job(),
          "' on this gstabd (`gstabctl status` lists its jobs): a job is held from its first "
          "worker's attach, and a state is imported into a new job by its worker after attaching"));
    }
    job = it->second;
    absl::Status mine = OwnerRefusal(request.job(), job->owner(), caller, "attach");
    if (!mine.ok()) return mine;
    const uint32_t observers = ObserversOf(job);
    const bool op =
        !caller.has_value() || IsOperator(*caller);  // none: unrestricted, as OwnerRefusal
    if (observers >= kMaxObserversPerJob + (op ? kObserversKeptForOperators : 0)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "job '", request.job(), "' already has ", observers,
          " observer sessions, the most a job ",
          op ? "has, operators' included" : "has (operators keep a few more for themselves)",
          ": detach those that are done (an observer that stops calling expires after a lease)"));
    }
    const std::string token = RandomToken();
    AddSession(token, Session{job, 0, MonotonicNow(), /*observer=*/true});
    unclaimed_.erase(request.job());
    idle_since_.erase(request.job());
    response->set_session(token);
    if (observer_ != nullptr) observer_->OnAttach(request.job(), 0, true);
  }
  // The job's lock after the daemon's is released: a job may hold its own for seconds (its GPU
  // generation closing), and every other RPC needs the daemon's.
  *response->mutable_effective_config() = EffectiveConfig(job->params());
  response->set_lease_ms(static_cast<uint64_t>(absl::ToInt64Milliseconds(options_.lease)));
  // As a worker's attach says (a client's calls take their timeout from it).
  response->set_step_timeout_ms(
      static_cast<uint64_t>(absl::ToInt64Milliseconds(options_.step_timeout)));
  response->set_restored(job->restored());
  return absl::OkStatus();
}

absl::Status Daemon::Attach(const v1::AttachRequest& request, v1::AttachResponse* response,
                            const std::optional<Principal>& caller) {
  if (absl::Status s = ValidateJobName(request.job()); !s.ok()) return s;
  if (request.observer()) return AttachObserver(request, response, caller);
  const uint32_t world = std::max(1u, request.world_size());
  const uint32_t local_world = std::max(1u, request.local_world_size());
  const uint32_t nodes = std::max(1u, request.node_count());
  if (local_world > kMaxLocalWorkers) {
    return absl::InvalidArgumentError(absl::StrCat("local_world_size ", local_world,
                                                   " exceeds gstabd's limit of ", kMaxLocalWorkers,
                                                   " workers per node"));
  }
  if (nodes > options_.max_nodes) {
    return absl::InvalidArgumentError(absl::StrCat("node_count ", nodes,
                                                   " exceeds gstabd's limit of ",
                                                   options_.max_nodes, " nodes (--max_nodes)"));
  }
  if (request.rank() >= world) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", request.rank(), " is not below world_size ", world));
  }
  if (request.local_rank() >= local_world) {
    return absl::InvalidArgumentError(absl::StrCat("local_rank ", request.local_rank(),
                                                   " is not below local_world_size ", local_world));
  }
  if (request.node_rank() >= nodes) {
    return absl::InvalidArgumentError(
        absl::StrCat("node_rank ", request.node_rank(), " is not below node_count ", nodes));
  }
  if (nodes == 1 && world > local_world) {
    // Otherwise the norms of sharded groups would leave out the other nodes' slices unseen.
    return absl::InvalidArgumentError(absl::StrCat(
        "world_size ", world, " is more than local_world_size ", local_world,
        " on a job of one node: a job across nodes attaches with node_rank, node_count and the "
        "rendezvous blob global rank 0 got from CreateRendezvous"));
  }
  if (nodes > 1 && request.rendezvous().empty()) {
    return absl::InvalidArgumentError(
        "a job with node_count > 1 needs the rendezvous blob that global rank 0 got from "
        "CreateRendezvous");
  }
  absl::StatusOr<RuleParams> params = ResolveConfig(request.config());
  if (!params.ok()) return params.status();
  std::optional<absl::StatusOr<v1::RendezvousInfo>> rendezvous;
  if (nodes > 1) rendezvous = ParseRendezvous(request);
  if (rendezvous.has_value() && !rendezvous->ok()) {
    absl::MutexLock lock(&mu_);  // no room is made, nor a job, for a refused attach
    if (jobs_.count(request.job()) == 0) return rendezvous->status();
  }
  std::optional<Removal> replaced;
  std::shared_ptr<Job> attached, tried;
  absl::Status s =
      AttachWorker(request, *params, local_world, rendezvous.has_value() ? &*rendezvous : nullptr,
                   caller, response, &replaced, &attached, &tried);
  Remove(replaced);  // the session this attach replaced, if any
  if (attached != nullptr) ReportWorkers(attached);
  // A job made for attaches that were all refused is not held for them.
  if (!s.ok() && tried != nullptr) Unmake(tried);
  return s;
}

absl::Status Daemon::ConfigConflict(const v1::AttachRequest& request, const RuleParams& held,
                                    bool running) {
  // Another node of a multi-node job has node 0's configuration, whatever its workers bring.
  const bool node_zeros_config = request.node_count() > 1 && request.node_rank() != 0;
  if (request.config().ByteSizeLong() == 0 || node_zeros_config) return absl::OkStatus();
  // A worker's config must ask for nothing the job does not have (as an update, it would change
  // nothing): only what it sets is compared, so the job's other fields, a change made since
  // and defaults of another gstabd release (a restored job's) do not count.
  // A preset names beta1 and beta2: a worker naming the other preset's is refused, both ways
  // (`stabilize` is v4's). Of a job whose betas were tuned since (neither preset's), it asks
  // nothing: the job's restarted workers still name the preset they were started with.
  v1::PolicyConfig config = request.config();
  if (config.has_stabilize() && !HasPresetBetas(held)) config.mutable_stabilize()->clear_preset();
  absl::StatusOr<RuleParams> asked = MergeConfig(held, config);
  if (!asked.ok()) return asked.status();
  if (SameEffectiveConfig(held, *asked)) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "job '", request.job(), "' ", running ? "already runs" : "came back from gstabd's checkpoint",
      " with a different configuration (", ConfigDifference(held, *asked),
      "); attach without one to keep it, or change it once attached (update_config; `gstabctl "
      "config set --job=",
      request.job(), "`)"));
}

absl::Status Daemon::RefusalBeforeRoom(const v1::AttachRequest& request,
                                       const std::optional<Principal>& caller) {
  absl::MutexLock lock(&mu_);
  // Held or not, before the attach uses anything of the job (it would count as in use, and wait
  // for its owner's attach); the check under the job's attach lock covers a claim meanwhile.
  if (absl::Status s = OwnerRefusal(request.job(), OwnerOf(request.job()), caller, "attach");
      !s.ok()) {
    return s;
  }
  if (jobs_.count(request.job()) == 1) return absl::OkStatus();  // held: no room to make
  auto checkpoint = checkpoints_.find(request.job());
  if (checkpoint == checkpoints_.end()) return absl::OkStatus();
  absl::StatusOr<RuleParams> saved = ResolveConfig(checkpoint->second.state.config());
  if (!saved.ok()) return absl::OkStatus();  // the job comes back with the asked one
  return ConfigConflict(request, *saved, /*running=*/false);
}

absl::Status Daemon::AttachWorker(const v1::AttachRequest& request, const RuleParams& config,
                                  uint32_t local_world,
                                  const absl::StatusOr<v1::RendezvousInfo>* rendezvous,
                                  const std::optional<Principal>& caller,
                                  v1::AttachResponse* response, std::optional<Removal>* replaced,
                                  std::shared_ptr<Job>* attached, std::shared_ptr<Job>* tried) {
  if (absl::Status s = RefusalBeforeRoom(request, caller); !s.ok()) return s;
  if (absl::Status s = MakeRoomFor(request.job(), caller); !s.ok()) return s;
  // A retired job's checkpoint on disk (possibly large, on a disk that may be slow) is read
  // before the daemon's lock is taken, and used below if it is still the one held then; if
  // another has taken its place meanwhile (the job attached, stepped and retired again), that
  // one is read, again outside the lock.
  std::optional<absl::Time> preloaded_since;
  {
    absl::MutexLock lock(&mu_);
    auto c = checkpoints_.find(request.job());
    if (jobs_.count(request.job()) == 0 && c != checkpoints_.end() && c->second.on_disk) {
      preloaded_since = c->second.since;
    }
  }
  std::shared_ptr<Job> job;
  bool existing;
  // Why the job's checkpoint file is set aside (its job refused it), once mu_ is let go: a
  // rename and a folder sync, which every RPC of the node would wait for under it.
  std::optional<std::string> set_aside;
  // Times the room made was taken meanwhile (another new job's attach retired the same idle
  // job, or filled the room it made): room is made again, a few times.
  int room_taken = 0;
  constexpr int kRoomAgain = 4;
  for (bool held = false; !held;) {
    if (room_taken > 0) {
      if (absl::Status s = MakeRoomFor(request.job(), caller); !s.ok()) return s;
    }
    absl::StatusOr<v1::JobState> preloaded = absl::NotFoundError("not read");
    if (preloaded_since.has_value()) preloaded = store_.Load(request.job());
    absl::MutexLock lock(&mu_);
    if (shutting_down_) return StoppingError("gstabd is shutting down");
    AwaitNotRetiring(request.job());
    std::shared_ptr<Job>& slot = jobs_[request.job()];
    existing = slot != nullptr;
    if (!existing && rendezvous != nullptr && !rendezvous->ok()) {
      jobs_.erase(request.job());  // a refused attach leaves no job behind
      return rendezvous->status();
    }
    if (!existing) {
      // Filled since MakeRoomFor: the node's cap, or this owner's.
      absl::Status full = jobs_.size() > options_.max_jobs ? JobCapReached() : absl::OkStatus();
      if (full.ok()) full = OwnerCapReached(caller);
      if (!full.ok()) {
        jobs_.erase(request.job());
        if (++room_taken > kRoomAgain) return full;
        continue;
      }
      std::optional<Checkpointed> from;  // the checkpoint the job comes back from
      auto checkpoint = checkpoints_.find(request.job());
      if (checkpoint != checkpoints_.end()) {
        // Whole again: its groups are kept on disk only (read above, outside the lock; if
        // another checkpoint has taken its place since, that one is, in the next turn).
        if (checkpoint->second.on_disk && preloaded_since != checkpoint->second.since) {
          jobs_.erase(request.job());
          preloaded_since = checkpoint->second.since;
          continue;  // the lock is let go, and that checkpoint read
        }
        absl::StatusOr<v1::JobState> state = checkpoint->second.state;
        if (checkpoint->second.on_disk) state = std::move(preloaded);
        if (!state.ok() && !absl::IsNotFound(state.status()) &&
            !absl::IsDataLoss(state.status())) {  // passing (I/O): kept, to try again
          jobs_.erase(request.job());
          return absl::UnavailableError(
              absl::StrCat("cannot read job '", request.job(), "''s checkpoint now (",
                           state.status().message(), "); it is kept: attach again"));
        }
        // The job comes back as it was, configuration included (a worker asking for another
        // is refused below, as for a job held all along).
        absl::StatusOr<RuleParams> saved = ResolveConfig(checkpoint->second.state.config());
        slot = std::make_shared<Job>(request.job(), saved.ok() ? *saved : config, local_world,
                                     &executor_, StepCallbackFor(request.job()), gpu_);
        // Given back as it was should every attach be refused (a checkpoint whose file is gone
        // or is not one: not). Also one its job refuses below: its file is set aside, but the
        // name stays its owner's, and the next attach starts the job afresh.
        if (state.ok()) from = checkpoint->second;
        absl::Status s = state.status();
        if (s.ok()) s = slot->ImportState(*state, /*with_config=*/false);
        if (!s.ok()) {
          LOG(WARNING) << "ignoring checkpoint of job '" << request.job() << "': " << s;
          set_aside = absl::StrCat("cannot be restored (", s.message(), ")");
          setting_aside_.insert(request.job());  // no checkpoint of it until the file is aside
          slot = std::make_shared<Job>(request.job(), config, local_world, &executor_,
                                       StepCallbackFor(request.job()), gpu_);
        } else {
          slot->set_restored();
          slot->RestoreConfigHistory(state->config_history());
          slot->RestoreRendezvous(state->rendezvous());
        }
        // Whose it was, even if its statistics could not be taken (kept in memory too).
        if (std::optional<Principal> owner = OwnerIn(checkpoint->second.state)) {
          slot->set_owner(*std::move(owner));
        }
        checkpoints_.erase(checkpoint);
      } else {
        slot = std::make_shared<Job>(request.job(), config, local_world, &executor_,
                                     StepCallbackFor(request.job()), gpu_);
      }
      // From its making: no other caller's observer attaches meanwhile. A refused attach gives
      // the job back (Unmake).
      if (caller.has_value() && !caller->nameless()) slot->ClaimIfUnowned(*caller);
      unclaimed_.insert_or_assign(request.job(), Unclaimed{slot, std::move(from)});
    }
    job = slot;
    *tried = job;
    ++pending_[request.job()];  // not retired while this attach is under way
    held = true;
  }
  if (set_aside.has_value()) {  // the job made afresh has no state to save over it yet
    absl::MutexLock saving(&save_mu_);
    store_.SetAsideCheckpoint(request.job(), *set_aside);
    absl::MutexLock lock(&mu_);
    setting_aside_.erase(request.job());
  }
  absl::Cleanup unpend = [this, &job] {
    absl::MutexLock lock(&mu_);
    Unpend(job);
  };
  // One attach of a job at a time from here: the checks of its workers' node count and
  // configuration, and its rendezvous, see the job as the attach before left it.
  absl::MutexLock attaching(job->attach_mutex());
  if (absl::Status mine = OwnerRefusal(request.job(), job->owner(), caller, "attach"); !mine.ok()) {
    return mine;
  }
  // The job's own state is read (and a new rendezvous installed) outside mu_: the job's lock
  // can be held a while (its GPU pipelines closing), and under mu_ every RPC of the node would
  // wait with it.
  if (existing || job->restored()) {
    if (absl::Status s = ConfigConflict(request, job->params(), existing); !s.ok()) return s;
  }
  response->set_restored(job->restored());
  if (existing && job->local_world_size() != local_world) {
    return absl::InvalidArgumentError(
        absl::StrCat("job '", request.job(), "' has local_world_size ", job->local_world_size(),
                     " on this node, not ", local_world,
                     ": every worker of a job on one node gives the same; a job made with the "
                     "wrong one keeps it while it is held (its statistics too): use a new job "
                     "name, or `gstabctl forget --job=",
                     request.job(), "` once none of its workers or observers is attached"));
  }
  {
    // Also for the attach that made the job: another may have attached before this one got the
    // job's attach lock.
    const uint32_t nodes = std::max(1u, request.node_count());
    if (const uint32_t job_nodes = job->node_count(); job_nodes != nodes) {
      // A job changes its node count only when no worker of it is attached here: else one
      // attach could route a running single-node job's steps to peers that do not exist.
      bool in_use = false;
      {
        absl::MutexLock lock(&mu_);
        const bool own_rank = WorkerToken(job, request.local_rank()) != nullptr;
        in_use = WorkersOf(job) > (own_rank ? 1u : 0u);
      }
      if (in_use) {
        return absl::FailedPreconditionError(
            absl::StrCat("job '", request.job(), "' runs on ", job_nodes,
                         " node(s) with workers attached "
                         "here; a worker of it cannot attach with node_count ",
                         nodes,
                         " (use the job's node count, or a new job name; sessions of workers "
                         "that stopped end within the lease, ",
                         absl::FormatDuration(options_.lease), ")"));
      }
      if (nodes == 1) job->SetCollective(nullptr, "");  // single-node from now on
    }
  }
  if (rendezvous != nullptr) {
    if (!rendezvous->ok()) return rendezvous->status();
    if (absl::Status s = JoinRendezvous(request, **rendezvous, job.get()); !s.ok()) return s;
  }
  *response->mutable_effective_config() = EffectiveConfig(job->params());

  const uint64_t attach = job->WorkerAttached(request.local_rank());  // not under the daemon's
  absl::MutexLock lock(&mu_);
  if (shutting_down_) return StoppingError("gstabd is shutting down");
  // A worker that attaches again under the same local rank (a restart) replaces its old
  // session.
  if (const std::string* previous = WorkerToken(job, request.local_rank())) {
    const std::string token = *previous;  // DropSession erases what `previous` points to
    LOG(INFO) << "job '" << request.job() << "' local rank " << request.local_rank()
              << " attached again; dropping its previous session";
    RememberReplaced(token, request.job(), request.local_rank());
    *replaced = DropSession(token, "replaced by a new attach", /*worker_gone=*/true);
  }
  // A job nobody owns yet (restored from a checkpoint of a release before owners, or made by a
  // certificate without a name under --jobs_by_uid=false) is its first worker's. Owners are
  // recorded whether or not they are enforced (jobs_by_uid), so that enforcing them later holds.
  if (caller.has_value() && !caller->nameless()) job->ClaimIfUnowned(*caller);
  const std::string token = RandomToken();
  AddSession(token, Session{job, request.local_rank(), MonotonicNow(), false, ++sessions_attached_,
                            attach});
  unclaimed_.erase(request.job());
  idle_since_.erase(request.job());
  if (observer_ != nullptr) observer_->OnAttach(request.job(), request.local_rank(), false);
  *attached = job;
  response->set_session(token);
  response->set_lease_ms(static_cast<uint64_t>(absl::ToInt64Milliseconds(options_.lease)));
  response->set_step_timeout_ms(
      static_cast<uint64_t>(absl::ToInt64Milliseconds(options_.step_timeout)));
  LOG(INFO) << "job '" << request.job() << "' local rank " << request.local_rank() << " attached";
  return absl::OkStatus();
}

}  // namespace gstab
