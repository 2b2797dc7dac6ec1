// gstabd's logic behind the wire: sessions with leases, jobs, the mapping registry and
// checkpoints. Every method takes and fills the gstab.v1 messages and returns an absl::Status
// whose message a user can act on; the gRPC layer (service.h) only translates.
//
// Thread-safe. Jobs step concurrently; calls of one job synchronise inside Job.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gstab/v1/stabilizer.pb.h"
#include "kernels/cpu_executor.h"
#include "server/job.h"
#include "server/observer.h"
#include "server/peer_tls.h"
#include "server/principal.h"
#include "server/registration.h"
#include "server/rendezvous_store.h"
#include "server/shm_mapping.h"
#include "server/state_store.h"

namespace gstab {

class StoreCalls;

struct DaemonOptions {
  std::string state_dir;  // empty: no checkpoints
  RegistrationCaps caps;
  uint32_t max_jobs = 256;  // jobs held at once, idle ones included (see RetireIdleJobs)
  // Jobs one owner (a uid, or a certificate's name) holds at once, so that one cannot take
  // every job of the node.
  uint32_t max_jobs_per_owner = 64;
  // Tensors one owner's registrations hold at once, over all its jobs and workers (the per
  // registration cap, RegistrationCaps::max_tensors, times one owner's jobs and local ranks
  // would let one uid make gstabd hold tens of GB of tensor tables).
  uint64_t max_tensors_per_owner = uint64_t{1} << 22;
  // Nodes one job may span: on each node a job across nodes holds a connection to every other
  // node (Gloo's full mesh), so that one caller cannot take the node's file descriptors.
  uint32_t max_nodes = 1024;
  // Shared-memory objects mapped at once, over every job (MappingRegistry).
  int max_mappings = MappingRegistry::kDefaultMaxMappings;
  int max_mappings_per_owner = MappingRegistry::kDefaultMaxMappingsPerOwner;  // of one uid's
  // A job without sessions for this long is retired (InfiniteDuration: never).
  absl::Duration job_idle = absl::Hours(1);
  // A checkpoint of a job not held (retired, or found at start and not attached since) is
  // deleted after this long, from memory and the state directory (InfiniteDuration: never).
  absl::Duration job_retention = absl::Hours(24 * 30);
  // Checkpoints of jobs not held that one owner keeps: past it, that owner's oldest go (so that
  // one making and leaving jobs in a loop cannot fill memory and the state directory).
  uint32_t max_checkpoints_per_owner = 1024;
  absl::Duration lease = absl::Seconds(30);         // session expiry without calls
  absl::Duration step_timeout = absl::Seconds(60);  // wait for a job's other local workers
  int cpu_threads = 0;                              // 0: all hardware threads
  // Multi-node jobs: the host this node's collective endpoints listen on (empty: none).
  std::string peer_host;
  // Mutual TLS between daemons for the rendezvous store (PEM contents; empty: plain TCP,
  // which gstabd allows on loopback only).
  MutualTls peer_tls;
  // Run cuda_ipc registrations on the CUDA pipeline (needs a CUDA build and a GPU).
  bool cuda = false;
  // Run the cross-node stage through NCCL for jobs of one rank too (see GpuJobSpec).
  bool nccl_one_rank = false;
  // A job belongs to whoever made it (recorded always): the uid of a worker through the unix
  // socket, the certificate's name of a client through --listen. When set, another
  // caller may not attach to it or forget it, save root, gstabd's own uid and `tls_operators`.
  bool jobs_by_uid = true;
  // Names of client certificates that act on every job (as root does over the socket).
  std::set<std::string> tls_operators;
};

class Daemon {
 public:
  // Restores the checkpoints found in options.state_dir (applied when their job attaches).
  // `observer` (may be null) receives steps, attaches, detaches and config changes.
  static absl::StatusOr<std::unique_ptr<Daemon>> Create(const DaemonOptions& options,
                                                        Observer* observer = nullptr);

  // `caller`: who calls (the gRPC service's StabilizerService::Caller), checked against the
  // job's owner (DaemonOptions::jobs_by_uid); nullopt, for in-process callers only, skips the
  // check. The same for ForgetJob and CreateRendezvous.
  absl::Status Attach(const v1::AttachRequest& request, v1::AttachResponse* response,
                      const std::optional<Principal>& caller);
  // `peer_uid`: the caller's uid when known (unix socket): its host_shm objects must be its own
  // (and without it, host_shm is refused).
  absl::Status RegisterBuffers(const v1::RegisterBuffersRequest& request,
                               v1::RegisterBuffersResponse* response,
                               std::optional<uid_t> peer_uid);
  // `call_deadline`: when the caller gives up the call (Job::Step).
  absl::Status Step(const v1::StepRequest& request, v1::StepResponse* response,
                    absl::Time call_deadline = absl::InfiniteFuture());
  absl::Status KeepAlive(const v1::KeepAliveRequest& request);
  absl::Status Detach(const v1::DetachRequest& request);
  absl::Status GetStats(const v1::GetStatsRequest& request, v1::GetStatsResponse* response);
  absl::Status UpdateConfig(const v1::UpdateConfigRequest& request,
                            v1::UpdateConfigResponse* response);
  absl::Status ExportState(const v1::ExportStateRequest& request,
                           v1::ExportStateResponse* response);
  absl::Status ImportState(const v1::ImportStateRequest& request,
                           v1::ImportStateResponse* response);
  // Whether `caller` passes the owner check of every job (jobs_by_uid off, root, gstabd's own
  // uid, a certificate tls_operators names).
  bool ActsOnEveryJob(const Principal& caller) const;
  // Whether `caller` is an operator (root, gstabd's own uid, a certificate tls_operators names),
  // whatever jobs_by_uid says.
  bool IsOperator(const Principal& caller) const;
  absl::Status ListJobs(const v1::ListJobsRequest& request, v1::ListJobsResponse* response,
                        const std::optional<Principal>& caller);
  // Drops a job no session uses, held or checkpointed (see the ForgetJob RPC).
  absl::Status ForgetJob(const v1::ForgetJobRequest& request, v1::ForgetJobResponse* response,
                         const std::optional<Principal>& caller);
  absl::Status CreateRendezvous(const v1::CreateRendezvousRequest& request,
                                v1::CreateRendezvousResponse* response,
                                const std::optional<Principal>& caller);

  // The address other daemons reach this one's rendezvous store at (set once the peer port
  // listens); empty when this daemon serves no peers.
  void SetPeerAddress(std::string address);
  RendezvousStore* rendezvous_store() { return &rendezvous_store_; }
  // Cancels the calls its jobs' communicators make to rendezvous stores (this node's or
  // another's), now and later: a stopping gstabd's steps waiting for nodes end at once.
  void CancelStoreCalls();

  // Drops sessions idle for longer than the lease; their registrations (and mappings) go. None
  // once BeginShutdown has run: a stopping gstabd answers no keep-alives.
  // `now`, here and in RetireIdleJobs, by MonotonicNow (common/monotonic_clock.h).
  void ExpireSessions(absl::Time now);
  // Retires every job that has had no session (worker or observer) for longer than
  // options.job_idle: its statistics are written to the state directory and kept in memory as
  // a checkpoint, and the job and everything it holds (GPU pipelines and memory, metric
  // series) go. A worker that attaches to it later resumes from those statistics, as after a
  // restart (AttachResponse.restored). At the job cap, an attach of a new job retires the
  // longest idle job at once.
  void RetireIdleJobs(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // Reports the steps CUDA jobs' GPUs have finished since their last Step (metrics, events):
  // without it they would wait for the next Step (Job::ReportFinishedGpuSteps).
  void ReportFinishedGpuSteps() ABSL_LOCKS_EXCLUDED(mu_);
  // Sets gstab_shm_mappings to the objects mapped now: mappings a step or a retirement lets go
  // of after the last attach, registration or detach count no more.
  void ReportShmMappings() ABSL_LOCKS_EXCLUDED(report_mu_);
  // Deletes the checkpoints of jobs not held for options.job_retention (a worker of such a job
  // then starts it afresh), and each owner's oldest past options.max_checkpoints_per_owner.
  void DeleteOldCheckpoints(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // Writes every held job's statistics to the state directory (and retired jobs' whose save
  // failed).
  absl::Status Checkpoint();
  // From now on Step fails with UNAVAILABLE; in-flight steps waiting for other local workers
  // answer UNAVAILABLE at once, and those already running finish.
  void BeginShutdown();
  // Waits until no step is in flight, or `deadline`; false on timeout.
  bool DrainSteps(absl::Time deadline);

  int LiveMappings() { return registry_.LiveMappings(); }
  const DaemonOptions& options() const { return options_; }

 private:
  struct Session {
    std::shared_ptr<Job> job;
    uint32_t local_rank = 0;
    absl::Time last_seen;  // MonotonicNow
    bool observer = false;
    uint64_t id = 0;  // worker sessions: numbered in attach order, from 1 (see Job::Register)
    uint64_t attach = 0;  // worker sessions: the rank's attach count at this one's (Job::Attaches)
  };

  Daemon(const DaemonOptions& options, Observer* observer);
  // The session of `token`, renewing its lease. UNAUTHENTICATED when unknown or expired.
  // `hold`: the job counts as in use (pending_) until Unhold, so that it is neither retired nor
  // forgotten while the call works on it (an import that waits for a running step, while its
  // session's lease runs out).
  absl::StatusOr<Session> Use(const std::string& token, bool hold = false) ABSL_LOCKS_EXCLUDED(mu_);
  void Unhold(const Session& session) ABSL_LOCKS_EXCLUDED(mu_);
  // As Use(), but refuses observer sessions (they may not register or step).
  absl::StatusOr<Session> UseAsWorker(const std::string& token) ABSL_LOCKS_EXCLUDED(mu_);
  // RegisterBuffers past the session check: validates, maps and claims the buffers, and
  // registers them with the session's job.
  absl::Status Register(const Session& session, const v1::RegisterBuffersRequest& request,
                        v1::RegisterBuffersResponse* response, std::optional<uid_t> peer_uid)
      ABSL_LOCKS_EXCLUDED(mu_);
  // A dropped worker session's removal from its job. It runs after mu_ is released: closing the
  // job's GPU pipelines waits (bounded, seconds per GPU) for their work, and under mu_ that
  // would hold up every RPC of the node, lease renewals included.
  struct Removal {
    std::shared_ptr<Job> job;
    uint32_t local_rank = 0;
    bool worker_gone = false;
    bool expired = false;  // its lease expired: the worker has been silent for a whole lease
    uint64_t attach = 0;   // the session's Session::attach
    uint64_t session = 0;  // the session's number: a newer session's registration stays
  };
  // Ends session `token`; its worker's removal is returned, for Remove once mu_ is released.
  // `worker_gone`: the worker may be dead (not a Detach), so a GPU step it queued may never be
  // ready; its pipeline is released rather than waited for.
  std::optional<Removal> DropSession(const std::string& token, const std::string& reason,
                                     bool worker_gone) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Remove(const std::optional<Removal>& removal) ABSL_LOCKS_EXCLUDED(mu_);
  // An expired worker's shared-memory object of another pid namespace (which no process here
  // can tell is gone) that another registration still maps: removed by RemoveKeptObjects, each
  // housekeeping tick, once nothing maps it.
  struct KeptObject {
    ShmObject object;
    std::string whose;  // for the log: its job and local rank
  };
  std::vector<KeptObject> kept_objects_ ABSL_GUARDED_BY(mu_);
  void RemoveKeptObjects() ABSL_LOCKS_EXCLUDED(mu_);
  // Removes an expired worker's `object` (logged) unless a registration maps it: then false.
  bool RemoveExpiredObject(const ShmObject& object, const std::string& whose);
  // Adds session `token` (sessions_ and job_sessions_).
  void AddSession(const std::string& token, Session session) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `job`'s worker sessions, its observer sessions, and the token of its worker session of
  // `local_rank` (null: none).
  uint32_t WorkersOf(const std::shared_ptr<Job>& job) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint32_t ObserversOf(const std::shared_ptr<Job>& job) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  const std::string* WorkerToken(const std::shared_ptr<Job>& job, uint32_t local_rank) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Holds `tensors` of the session's job's owner's budget (max_tensors_per_owner) while the
  // session's registration runs; released when the returned handle goes. RESOURCE_EXHAUSTED
  // when they, the owner's tensors registered (save the session's rank's own registration,
  // which this one replaces) and the owner's other registrations under way pass the cap.
  absl::StatusOr<std::shared_ptr<void>> ReserveTensors(const Session& session, uint64_t tensors)
      ABSL_LOCKS_EXCLUDED(mu_, budget_mu_);
  // Refreshes the job's worker and byte gauges.
  void ReportWorkers(const std::shared_ptr<Job>& job) ABSL_LOCKS_EXCLUDED(mu_, report_mu_);
  Job::StepCallback StepCallbackFor(const std::string& job);
  // The rendezvous of a multi-node `request`: a blob gstabd made, for this job and node count,
  // on a gstabd that serves multi-node jobs. A new job is not made for a refused one.
  absl::StatusOr<v1::RendezvousInfo> ParseRendezvous(const v1::AttachRequest& request) const;
  // Installs the communicator of rendezvous `info` (ParseRendezvous's) on `job` unless it
  // already has it.
  absl::Status JoinRendezvous(const v1::AttachRequest& request, const v1::RendezvousInfo& info,
                              Job* job) ABSL_LOCKS_EXCLUDED(mu_);
  // Whether a session (worker or observer), an attach or a removal uses `job`.
  bool InUse(const std::shared_ptr<Job>& job) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends one pending use of `job` (see pending_); idle from now if nothing else uses it.
  void Unpend(const std::shared_ptr<Job>& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status JobCapReached() const;
  // RESOURCE_EXHAUSTED when `caller` already owns max_jobs_per_owner held jobs (a new job of
  // theirs would be one more); OK for callers without a name.
  absl::Status OwnerCapReached(const std::optional<Principal>& caller) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // ABORTED, saying so, when session `token` was replaced by another attach; else OK.
  absl::Status Replaced(const std::string& token) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `status`, unless it is a job's UNAUTHENTICATED for a call of session `token` that another
  // attach replaced while the call was under way: then that ABORTED.
  absl::Status ReplacedOr(const std::string& token, absl::Status status) ABSL_LOCKS_EXCLUDED(mu_);
  // Notes that session `token` (of `job`'s `local_rank`) was replaced by a new attach.
  void RememberReplaced(const std::string& token, const std::string& job, uint32_t local_rank)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Notes the jobs without sessions (idle from now, if not already) and forgets the others.
  void UpdateIdle(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Retires `job` unless a session uses it or it was replaced: exports its state (outside mu_:
  // the job's lock can be held a while) and keeps that as its checkpoint. Attaches to the job
  // wait meanwhile (see AwaitNotRetiring). False when it was not retired.
  // `idle_before`: only if it has been idle since then at the latest.
  bool Retire(const std::shared_ptr<Job>& job, const std::string& reason, absl::Time idle_before)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Gives back `job` if no session has used it since an attach made it and no attach is under
  // way: it leaves, and the checkpoint it came from (if any) is put back as it was (no save, no
  // event: nobody saw the job).
  void Unmake(const std::shared_ptr<Job>& job) ABSL_LOCKS_EXCLUDED(mu_);
  // Waits (releasing mu_) until job `name` is not being retired.
  void AwaitNotRetiring(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // At the job cap, or `caller`'s cap, before `job` (not yet held) is made: retires the
  // longest idle job (of `caller`'s, at theirs) of those idle for at least the lease.
  // RESOURCE_EXHAUSTED when there is none.
  absl::Status MakeRoomFor(const std::string& job, const std::optional<Principal>& caller)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status AttachObserver(const v1::AttachRequest& request, v1::AttachResponse* response,
                              const std::optional<Principal>& caller);
  // Which jobs `caller` may act on (ListJobsResponse.caller_scope).
  v1::CallerScope ScopeOf(const Principal& caller) const;
  // Whom job `name`, held or checkpointed, belongs to, if anyone.
  std::optional<Principal> OwnerOf(const std::string& name) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // PERMISSION_DENIED when job `name`, belonging to `owner`, is not the caller's (jobs_by_uid),
  // or when a TCP caller's certificate has no name to own a job by; its message says
  // how the caller may `action` ("attach", "forget it").
  absl::Status OwnerRefusal(const std::string& name, const std::optional<Principal>& owner,
                            const std::optional<Principal>& caller, const char* action) const;
  // FAILED_PRECONDITION when `request` asks for a configuration other than `held`, the job's
  // (`running`, or restored from its checkpoint); another node's worker of a multi-node job
  // (which takes node 0's) asks for none.
  static absl::Status ConfigConflict(const v1::AttachRequest& request, const RuleParams& held,
                                     bool running);
  // What refuses an attach to a job not held (its checkpoint's owner, or configuration), before
  // MakeRoomFor retires another job for it; checked again once the job is made.
  absl::Status RefusalBeforeRoom(const v1::AttachRequest& request,
                                 const std::optional<Principal>& caller) ABSL_LOCKS_EXCLUDED(mu_);
  // Attach's part before the removal: the job (left in `attached`; found or made under mu_,
  // then checked and given its rendezvous under the job's own lock) and the session (under
  // mu_); the session this one replaces (same job and local rank) is ended and its removal
  // left in `replaced`. The job it found or made is left in `tried`, refused or not.
  // `rendezvous`: ParseRendezvous's answer, for a multi-node request (else null).
  absl::Status AttachWorker(const v1::AttachRequest& request, const RuleParams& config,
                            uint32_t local_world,
                            const absl::StatusOr<v1::RendezvousInfo>* rendezvous,
                            const std::optional<Principal>& caller, v1::AttachResponse* response,
                            std::optional<Removal>* replaced, std::shared_ptr<Job>* attached,
                            std::shared_ptr<Job>* tried) ABSL_LOCKS_EXCLUDED(mu_);

  const DaemonOptions options_;
  RegistrationCaps caps_;
  Observer* const observer_;
  std::unique_ptr<DeviceMemory> device_memory_;  // null without the CUDA pipeline
  GpuBackend gpu_;                               // empty without the CUDA pipeline
  CpuExecutor executor_;
  MappingRegistry registry_;
  MemoryClaims claims_;  // registered memory by job, over every job
  StateStore store_;
  RendezvousStore rendezvous_store_;
  const std::shared_ptr<StoreCalls> store_calls_;

  absl::Mutex mu_;
  std::map<std::string, Session> sessions_ ABSL_GUARDED_BY(mu_);
  // sessions_ by job: its observers' count, and its workers' tokens by local rank (a rank has
  // one worker session: another attach of it replaces it). Kept by AddSession and DropSession.
  struct JobSessions {
    uint32_t observers = 0;
    std::map<uint32_t, std::string> workers;
  };
  std::map<const Job*, JobSessions> job_sessions_ ABSL_GUARDED_BY(mu_);
  // Tokens of the newest sessions replaced by another attach of their local rank, and what a
  // call with one is told (ABORTED: its worker must not attach again, or the two processes
  // would take the rank from each other at every step). A token older than the newest
  // kRememberedReplacements is told UNAUTHENTICATED, as an expired one is.
  static constexpr size_t kRememberedReplacements = 4096;
  // Observer sessions (gstabctl, dashboards) a job may have at once: every RPC's session scans
  // are over all sessions, and one caller must not slow every job's down with many.
  static constexpr int kMaxObserversPerJob = 64;
  // Past it, for operators alone: others holding every place (a job's owner, or anyone with
  // --jobs_by_uid=false) do not lock root's `gstabctl` out of the job.
  static constexpr int kObserversKeptForOperators = 8;
  std::map<std::string, std::string> replaced_sessions_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> replaced_order_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
  // The statistics of jobs not held (found at start, or retired), and since when they are not.
  // Their groups (most of their size) are kept in memory only until they are on disk, and read
  // back from there when the job is restored.
  struct Checkpointed {
    Checkpointed(v1::JobState job_state, absl::Time saved, bool saved_to_disk);
    // Once on disk, the state without its groups.
    void SavedToDisk();
    v1::JobState state;
    uint32_t groups = 0;
    absl::Time since;
    bool on_disk = true;  // false: saving it failed; Checkpoint tries again
  };
  std::map<std::string, Checkpointed> checkpoints_ ABSL_GUARDED_BY(mu_);
  // Jobs an attach made (new, or back from their checkpoint, which is kept here) that no session
  // has used yet: when the attaches to one are all refused, it is given back (Unmake).
  struct Unclaimed {
    std::shared_ptr<Job> job;
    std::optional<Checkpointed> from;
  };
  std::map<std::string, Unclaimed> unclaimed_ ABSL_GUARDED_BY(mu_);
  // Since when (MonotonicNow) each held job has had no session (jobs with sessions are absent).
  std::map<std::string, absl::Time> idle_since_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> retiring_ ABSL_GUARDED_BY(mu_);  // jobs whose state is being exported
  // Jobs made afresh whose checkpoint could not be restored, until its file is set aside: a
  // checkpoint of the new job written before would be set aside instead.
  std::set<std::string> setting_aside_ ABSL_GUARDED_BY(mu_);
  // Attaches, worker removals, steps, and the calls that change or export a job's state (Use's
  // `hold`) under way, per job: they keep it from retiring as a session does (an attach has not
  // made its session yet; a removal has not ended the job's GPU generation, which brings its
  // final statistics home; a step's or an import's session may have ended while it runs).
  std::map<std::string, int> pending_ ABSL_GUARDED_BY(mu_);
  // Checkpoint's part for retired jobs whose save failed: saved again, `failed` told of those
  // that fail again.
  void SaveRetiredUnsaved(
      const std::function<void(const std::string& job, const absl::Status&)>& failed)
      ABSL_LOCKS_EXCLUDED(mu_, save_mu_);
  // One round of checkpoints at a time (the periodic one, a stop's): a job's state is saved by
  // one round only, in the order of its exports.
  absl::Mutex round_mu_ ABSL_ACQUIRED_BEFORE(save_mu_);
  // Held across each checkpoint's write, and its export but a busy job's (whose round checks
  // the job is still held, as it was, before the write): an older state of a job is never
  // written after a newer one. Taken before a job's lock and mu_, never under them.
  absl::Mutex save_mu_;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  // Tensors of registrations under way, by owner (Principal::ToString; "" for jobs of none).
  absl::Mutex budget_mu_;  // taken alone
  std::map<std::string, uint64_t> tensors_in_flight_ ABSL_GUARDED_BY(budget_mu_);
  std::string peer_address_ ABSL_GUARDED_BY(mu_);
  // Numbers this store's rendezvous, over every job: a job's newer blob always has the higher
  // number, and no per-name record outlives the job.
  uint64_t rendezvous_made_ ABSL_GUARDED_BY(mu_) = 0;
  const absl::Time started_ = absl::Now();  // orders this store's rendezvous across restarts
  int steps_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t sessions_attached_ ABSL_GUARDED_BY(mu_) = 0;  // numbers worker sessions
  // Held across the set of a job's gauges (after Job::gauge_report_mu and the reads, which it
  // keeps in order) and across a retirement's removal of its series, so that no report of a
  // retired job lands after that; taken under no lock but a job's gauge_report_mu.
  absl::Mutex report_mu_;
};

}  // namespace gstab
