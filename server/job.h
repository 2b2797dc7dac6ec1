// One training job on this node: its configuration, the statistics of its norm groups, the
// registrations of its local workers, and the per-step pipeline on the CPU backend.
//
// A step is a round: every local worker calls Step(s); the last to arrive runs the pipeline
// (partial sums per worker -> combine per group -> rule -> scale every worker's chunks) and all
// of them return the same result. Thread-safe; distinct jobs share nothing but the executor.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/rule_types.h"
#include "gstab/v1/stabilizer.pb.h"
#include "kernels/chunk_table.h"
#include "kernels/cpu_executor.h"
#include "server/collective.h"
#include "server/gpu_pipeline.h"
#include "server/gpu_workers.h"
#include "server/principal.h"
#include "server/registration.h"
#include "server/shm_mapping.h"

namespace gstab {

struct StepCheck;  // server/cross_node.h

class Job {
 public:
  // Finished GPU steps taken off a pipeline under mu_, reported after it is released, in the
  // order of their tickets (0: nothing to report).
  struct GpuReports {
    uint64_t ticket = 0;
    std::vector<v1::StepResponse> reports;
  };

  // Called without locks held once per round that succeeded (CPU), by the worker that ran it,
  // or once per step the GPU finished (CUDA), by whichever call reports it.
  // A finished step's results, and how long the daemon took (nullopt: not timed, as on the
  // CUDA pipeline, whose steps finish on the GPU after Step has answered).
  using StepCallback = std::function<void(const v1::StepResponse&, std::optional<absl::Duration>)>;

  // `executor` is shared, not owned, and outlives the job.
  // `gpu` builds the CUDA pipelines of cuda_ipc registrations (without it they are refused).
  Job(std::string name, const RuleParams& params, uint32_t local_world_size, CpuExecutor* executor,
      StepCallback on_step = nullptr, GpuBackend gpu = {});
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  const std::string& name() const { return name_; }
  uint32_t local_world_size() const { return local_world_size_; }
  // Whether the job came back from a checkpoint when this gstabd made it (a restart, or its
  // retirement when idle): its statistics and configuration are the checkpoint's.
  bool restored() const { return restored_; }
  void set_restored() { restored_ = true; }
  // Whom the job belongs to (Daemon: jobs by uid), if anyone.
  std::optional<Principal> owner() const {
    absl::MutexLock lock(&owner_mu_);
    return owner_;
  }
  void set_owner(Principal owner) {
    absl::MutexLock lock(&owner_mu_);
    owner_ = std::move(owner);
  }
  // Makes `claimant` the owner of a job that has none.
  void ClaimIfUnowned(const Principal& claimant) {
    absl::MutexLock lock(&owner_mu_);
    if (!owner_.has_value()) owner_ = claimant;
  }
  // Held by an attach of this job while it checks and joins it (taken before the daemon's
  // lock and this job's, never while holding either).
  absl::Mutex* attach_mutex() { return &attach_mu_; }
  RuleParams params() const;

  // A worker of `local_rank` attached (a new session): a step no longer fails at once for that
  // rank having detached. Returns the rank's attach count with it (Attaches), which names this
  // attach's session to RemoveWorker.
  uint64_t WorkerAttached(uint32_t local_rank);

  // Sessions are numbered in the order they attach (from 1; 0: not known). A session's calls
  // can arrive after a newer session of the same local rank has replaced it (they passed the
  // daemon's session check before the replacement): Register, Step and RemoveWorker with an
  // older session's number than the newest one seen for that rank do nothing, and Register
  // and Step say so (UNAUTHENTICATED).

  // Replaces the registration of worker `local_rank`, made by session `session`.
  // INVALID_ARGUMENT when a group's reduction (sharded / replicated) disagrees with the job's.
  absl::Status Register(uint32_t local_rank, MappedRegistration registration,
                        v1::RegisterBuffersResponse* response, uint64_t session = 0);
  // A registration of session `session` was refused (`why`), by the job or before it: the rank's
  // earlier registration goes too, as its client has let go of it, and its Steps are refused,
  // naming `why`, until it registers again. Nothing for a session that has ended.
  void DropRegistration(uint32_t local_rank, uint64_t session, const absl::Status& why);
  // `gone`: the worker is dead or replaced (its lease expired, it attached again), so a step it
  // queued may never be ready: its GPU pipeline is released rather than waited for. Ends
  // session `session` for this rank: a newer session's registration stays.
  // A step waiting for the rank is then told at once (see detached_) that its worker detached
  // (`gone` false) or that its lease ran out (`expired`: a worker that stopped without
  // detaching: crashed, killed, or frozen); not when the session was replaced, nor when the
  // rank has attached since the session's own attach (`attach`, WorkerAttached's count).
  // Returns the host shared-memory objects of the registration it removed.
  std::vector<ShmObject> RemoveWorker(uint32_t local_rank, bool gone = false, uint64_t session = 0,
                                      std::optional<uint64_t> attach = std::nullopt,
                                      bool expired = false);
  // How many times a worker of `local_rank` has attached (WorkerAttached). Takes a lock of its
  // own alone: callable under the daemon's.
  uint64_t Attaches(uint32_t local_rank) const;
  uint64_t RegisteredBytes() const;
  // The step whose round runs now (every local rank arrived: stepping, or waiting for the other
  // nodes), if one does.
  std::optional<uint64_t> RunningStep() const ABSL_LOCKS_EXCLUDED(mu_);
  // Waits, up to `wait`, for a round that scales `local_rank`'s gradients to end (a worker that
  // detaches after its Step call gave up, while the round it joined still runs, may reuse its
  // memory once Detach answers).
  void AwaitRoundOf(uint32_t local_rank, absl::Duration wait) const;
  // Tensors its workers' registrations hold, save `except_rank`'s.
  uint64_t RegisteredTensors(std::optional<uint32_t> except_rank = std::nullopt) const;
  // The CUDA pipeline: reports the steps the job's GPU has finished since a Step last looked
  // (metrics, events), without waiting for the GPU; else they would wait for the worker's next
  // Step, which a run's last step never has. gstabd's housekeeping calls it about every second.
  void ReportFinishedGpuSteps() ABSL_LOCKS_EXCLUDED(mu_);
  // Whether some group is diverging, as the statistics held here say (a GPU job's as of the last
  // copy from the GPU).
  bool Diverging() const;
  // Held by the daemon across one report of this job's gauges (its reads and the set), so that
  // the job's reports do not overtake each other while other jobs' go on. Taken under no lock.
  absl::Mutex& gauge_report_mu() const ABSL_LOCK_RETURNED(gauge_report_mu_) {
    return gauge_report_mu_;
  }
  // The GPU of local rank `local_rank`'s newest cuda_ipc registration, if it made one (even if
  // its GPU generation has ended since).
  std::optional<int> CudaDevice(uint32_t local_rank) const;

  // Multi-node jobs: the communicator of the current rendezvous (identified by its token).
  // Installing a new one (a new generation) replaces a failed one; the next step then starts
  // by adopting node 0's statistics so every node continues from the same state.
  // `nccl` is the same rendezvous for the CUDA pipeline (its communicator is made when the
  // worker registers cuda_ipc buffers).
  void SetCollective(std::shared_ptr<Collective> collective, std::string rendezvous_token,
                     NcclRendezvous nccl = {});
  // SetCollective for the rendezvous `info`, unless the job has it already (OK: another attach
  // installed it; INVALID_ARGUMENT when as another node than `nccl.node_rank`) or it is older than
  // the job's current one from the same store (FAILED_PRECONDITION: a worker kept an old blob, say
  // in GSTAB_RENDEZVOUS, and would take every node of the job back to a generation that has ended).
  absl::Status JoinRendezvous(std::shared_ptr<Collective> collective,
                              const v1::RendezvousInfo& info, NcclRendezvous nccl);
  // This node's rank in the current communicator (0 without one), and its node count (1).
  uint32_t node_rank() const;
  uint32_t node_count() const;
  std::string rendezvous_token() const;

  // Runs (or joins) the round of `step`. DEADLINE_EXCEEDED names the local ranks that did not
  // arrive within `timeout` of this call (half of it on a job across nodes, whose nodes wait for
  // each other as long); FAILED_PRECONDITION for a worker without buffers (or whose buffers its
  // session did not register) or on another step, and at once, naming them, when missing
  // ranks' workers detached (see detached_), or when this call's own session's registration was
  // refused meanwhile.
  // `ready_value`: for cuda_ipc workers, the value of this step's ready write (StepRequest).
  // `call_deadline`: when the worker's call gives up (its client then takes the step as lost and
  // zeroes its gradients): on the CPU backend a round found past any of its workers' deadlines
  // once summed applies nothing (on a job across nodes, refused in the step's check on every
  // node), and one found so before its scaling counts the step and scales nothing
  // (DEADLINE_EXCEEDED): a gstabd resumed after a freeze does not scale gradients that a
  // worker's next backward pass is writing. A CUDA step found past it enqueues nothing; with
  // several GPUs (whose collectives would wait for its) it ends the job's GPU generation.
  absl::Status Step(uint32_t local_rank, uint64_t step, absl::Duration timeout,
                    v1::StepResponse* response, uint32_t ready_value = 0, uint64_t session = 0,
                    absl::Time call_deadline = absl::InfiniteFuture());

  // gstabd is stopping: Steps of an open round that still waits for other local workers (whose
  // Steps gstabd now refuses) answer UNAVAILABLE at once, as do later ones on the CPU backend.
  // A round already running finishes.
  void BeginShutdown();

  // Merges `update` into the configuration; effective from the next step.
  // `before` (may be null) receives the configuration it replaced (the same when nothing
  // changed: then the version stays).
  absl::Status UpdateConfig(const v1::PolicyConfig& update, v1::UpdateConfigResponse* response,
                            RuleParams* before = nullptr);

  void GetStats(v1::GetStatsResponse* response) const;
  // The job's line of ListJobs: its policy, step counts, group count, registered bytes, local
  // world size and the step waiting for workers (not its groups' statistics, which GetStats
  // builds).
  void Summarize(v1::JobSummary* out) const;
  // The job's state; for its checkpoint (`with_history`), with its configuration's versions too
  // (JobState.config_history), read with the rest at once.
  v1::JobState ExportState(bool with_history = false) const;
  // The same, unless the job's lock stays held for `wait` (a step of several GPUs holds it
  // while it enqueues, NCCL's waits included): then nothing.
  std::optional<v1::JobState> ExportStateWithin(absl::Duration wait, bool with_history) const;
  // Replaces the statistics of every group in `state` (creating groups as needed) and, when
  // `with_config`, the configuration. INVALID_ARGUMENT for an unknown format version. A step in
  // progress (its local workers arriving, or queued on the job's one GPU) is waited for, up to
  // `wait`; the job's next step waits for the import meanwhile.
  // `switched` (may be null) receives the configuration the import replaced, if it replaced
  // one: before, after and the new version, read at once.
  struct ConfigSwitch {
    RuleParams before;
    RuleParams after;
    uint64_t version = 0;
  };
  absl::Status ImportState(const v1::JobState& state, bool with_config,
                           absl::Duration wait = kImportWait,
                           std::optional<ConfigSwitch>* switched = nullptr);
  static constexpr absl::Duration kImportWait = absl::Seconds(5);
  // One import of the job at a time (ImportState's caller takes its turn, or is refused): each
  // holds its request and the state it parsed while it waits for a step in progress, which many
  // at once would multiply.
  bool BeginImport() { return !import_under_way_.exchange(true); }
  void EndImport() { import_under_way_ = false; }
  // The names of `state`'s groups that no worker registered on this node now names (none until
  // every local worker has registered: an import before registering is the usual order).
  std::vector<std::string> UnregisteredGroups(const v1::JobState& state) const
      ABSL_LOCKS_EXCLUDED(mu_);

  // A restored job's history, read back from its checkpoint: its version goes on from the
  // checkpoint's rather than from 1 (a new version when this gstabd reads the configuration
  // otherwise, with other defaults). A history gstabd could not have written (versions not
  // increasing) is ignored, with a warning.
  void RestoreConfigHistory(const google::protobuf::RepeatedPtrField<v1::ConfigChange>& history);
  // A restored job's newest rendezvous (its checkpoint's, without a token): an older blob is
  // refused as if the job had run with it on this gstabd all along.
  void RestoreRendezvous(const v1::RendezvousInfo& rendezvous);

 private:
  struct Worker {
    MappedRegistration registration;
    std::vector<uint32_t> tensor_group;  // job group index per tensor
    ChunkTable table;
    std::vector<bool> has_group;  // indexed by job group
    // Set once the registration leaves the job (its worker detached or gone, or its
    // replacement refused): a round that took it before then no longer scales its memory, which
    // its worker may reuse.
    mutable std::atomic<bool> removed{false};
  };
  // Takes local_rank's registration out of workers_, marked removed.
  void EraseWorker(uint32_t local_rank) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  using WorkerMap = std::map<uint32_t, std::shared_ptr<const Worker>>;

  uint32_t GroupIndex(const std::string& group) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The job's groups, by index: what OrderGroupsLike moves, and a refused registration puts
  // back.
  struct GroupLayout {
    std::vector<std::string> names;
    std::vector<int> reduction;
    std::vector<GroupStats> stats;
    std::vector<StepOutcome> outcomes;
  };
  GroupLayout Groups() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetGroups(GroupLayout layout) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Orders the groups as `plan` first names them, then those it does not name (a checkpoint's or
  // an import's) as they were; creates the plan's new ones. For a job no registration has
  // ordered since it was made, restored or imported into: every node of a job across nodes then
  // lays out the same registration's groups in the same order, which its cross-node stage needs,
  // whatever its own import or checkpoint brought before. False when the order was that already
  // (new groups, if any, at the end).
  bool OrderGroupsLike(const RegistrationPlan& plan) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // INVALID_ARGUMENT when a tensor of `registration` shares memory with one that another local
  // rank of this job registered: both ranks' steps would count and scale it.
  absl::Status CheckNoSharedMemory(uint32_t local_rank,
                                   const MappedRegistration& registration) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // RESOURCE_EXHAUSTED when `new_groups` more would pass kMaxGroupsPerJob.
  absl::Status CheckGroupCap(size_t new_groups) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Bumps the config version and records params_ as its change (keeping the newest
  // kConfigHistory).
  void RecordConfigChange() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // SetCollective's work, under mu_.
  void InstallCollective(std::shared_ptr<Collective> collective, std::string rendezvous_token,
                         NcclRendezvous nccl) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // FAILED_PRECONDITION: new betas for a job whose CUDA buffers are registered.
  absl::Status RegisteredGpuBetas() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes node 0's configuration (BroadcastParams) the job's on this node, `node`: a new
  // version, logged with `when`.
  void TakeNodeZerosConfig(const RuleParams& node_zeros, uint32_t node, const std::string& when)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Rescales stats_ (host copy) from stats_params_ to params_ (RescaleStabilizerEmas).
  void AlignStatistics() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // OK unless this job spans nodes and `what` (an operator's change of its configuration or
  // statistics) would reach one node only: FAILED_PRECONDITION saying where to do it.
  absl::Status NodeZerosStateOnly(const std::string& what) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // For an import: waits (releasing mu_ meanwhile, the job's next step held) until no step is
  // in progress (a round open, or a step queued on the job's one GPU), for up to `wait`.
  // Returns holding mu_, with no step in progress if OK.
  absl::Status AwaitBetweenSteps(absl::Duration wait) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Why the job takes no import of `state` now, whatever its steps do (OK if it does).
  absl::Status ImportRefusal(const v1::JobState& state, bool with_config,
                             const RuleParams& params) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static constexpr size_t kConfigHistory = 64;
  // UNAUTHENTICATED when a newer session than `session` has registered or ended local rank
  // `local_rank` (see Register).
  absl::Status CheckSession(uint32_t local_rank, uint64_t session) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether a newer session than `session` has registered or ended local rank `local_rank`.
  bool SessionEnded(uint32_t local_rank, uint64_t session) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether session `session` made local rank `local_rank`'s registration (any, for calls made
  // without sessions: 0).
  bool RegisteredBy(uint32_t local_rank, uint64_t session) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Step's refusal of a rank without buffers (none, or none its session registered).
  absl::Status NoBuffers(uint32_t local_rank) const;
  // The CUDA path: enqueue local_rank's step and answer with its newest finished one.
  absl::Status StepGpu(uint32_t local_rank, uint64_t step, uint32_t ready_value, uint64_t session,
                       absl::Time call_deadline, v1::StepResponse* response)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Registers a cuda_ipc worker: its pipeline in the current GPU generation.
  absl::Status RegisterGpu(uint32_t local_rank, const MappedRegistration& registration,
                           const ChunkTable& table, v1::RegisterBuffersResponse* response)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Closes the GPU pipelines (keeping their statistics); every CUDA worker registers again,
  // and hears `why` when it steps before it has. `gone`: a local rank whose worker is gone.
  // `finished` (a worker's removal): the primary's finished steps no Step has reported, for
  // ReportGpuSteps once mu_ is released (GpuWorkers::Close says which); without it (a failure,
  // a registration again, a new rendezvous), they wait in unreported_gpu_steps_.
  void EndGpuGeneration(const std::string& why, std::optional<uint32_t> gone = std::nullopt,
                        GpuReports* finished = nullptr) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Local rank `local_rank`'s `finished` steps as reports answering step `step`, into `out`;
  // when they are the primary's (`primary`), whose results speak for the job, after those of
  // an ended generation not reported yet (unreported_gpu_steps_). Notes a step the nodes
  // disagreed on (gpu_mismatch_).
  void CollectGpuSteps(uint32_t local_rank, bool primary,
                       const std::vector<GpuStepResult>& finished, uint64_t step, GpuReports* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A ticket for on_step_ for `out`'s reports (the primary's), unless it has one or none.
  void TakeReportTicket(GpuReports* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // RemoveWorker's work under mu_ (which it takes); `finished` as EndGpuGeneration's.
  // Takes back local rank `local_rank`'s Step in the open round when a session numbered `first`
  // to `last` made it: the round must not run on a registration whose worker has not called
  // Step. A round already running keeps its arrivals (its runner has taken the registrations it
  // steps).
  void WithdrawArrival(uint32_t local_rank, uint64_t first, uint64_t last)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<ShmObject> RemoveWorkerUnderLock(uint32_t local_rank, bool gone, uint64_t session,
                                               std::optional<uint64_t> attach, bool expired,
                                               GpuReports* finished) ABSL_LOCKS_EXCLUDED(mu_);
  // Hands `taken` to on_step_ after the reports of every earlier ticket: a Step and
  // ReportFinishedGpuSteps may take steps off the pipeline one after the other and report
  // them at once.
  void ReportGpuSteps(const GpuReports& taken) ABSL_LOCKS_EXCLUDED(mu_, report_mu_);
  // FAILED_PRECONDITION: local_rank's GPU generation ended; it registers its buffers again
  // (saying why, when EndGpuGeneration said).
  absl::Status RegisterAgain(uint32_t local_rank) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Agrees the GPUs' group count (locally, then across nodes) before a generation's first step,
  // for local_rank's Step. Releases mu_ while it waits for the other nodes (or for another
  // local rank's agreement); FAILED_PRECONDITION when the generation ended meanwhile.
  absl::Status AgreeGpuLayout(uint32_t local_rank) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Copies the GPU-resident statistics into stats_ without waiting for the GPU: the exact ones
  // when it is idle, else the newest finished step's (or, before one, what the generation
  // started from), whose step it returns then.
  std::optional<uint64_t> RefreshStatistics() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::JobState ExportStateLocked(bool with_history) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Copies the newest finished GPU step's statistics into stats_ and returns that step (nullopt:
  // no GPU pipeline). Before a step of the generation has finished, stats_ stays what the
  // generation started from, and its step is returned (gpu_base_step_).
  std::optional<uint64_t> CopySnapshot() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FillGroupResult(size_t g, const StepOutcome& out, v1::GroupResult* r) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A job across nodes gives up the round `round` of step `step`, whose local workers did not
  // all arrive (`late` says which): every waiter of it hears so, later Steps of it are refused,
  // and the other nodes are told in the step's check within `budget` (releasing mu_ meanwhile).
  // The caller hears whether telling them failed (the communicator is then broken). `code`:
  // DEADLINE_EXCEEDED for workers that did not come in time, FAILED_PRECONDITION for ones that
  // detached.
  absl::Status AbandonRound(uint64_t step, uint64_t round, const std::string& late,
                            absl::Duration budget, absl::StatusCode code)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // UNAVAILABLE: step `step` was not taken, as gstabd is shutting down.
  absl::Status ShuttingDown(uint64_t step) const;
  // This node refuses step `step` with `refusal`: it tells the other nodes, which wait in the
  // step's check, so that they leave it at once with their communicator intact. `told` (may be
  // null): ABORTED when the other nodes heard it, else why they did not.
  absl::Status RefuseAcrossNodes(const std::shared_ptr<Collective>& collective, uint64_t step,
                                 StepCheck check, absl::Duration timeout,
                                 const std::vector<int>& reduction, absl::Status refusal,
                                 absl::Status* told = nullptr);
  // Before this node's first exchange of host-memory steps under a CUDA rendezvous (one with an
  // NCCL id): nodes that registered cuda_ipc buffers begin theirs with AgreeGpuLayout's, of
  // another size, which Gloo cannot pair with this node's step check (seen: both wait out their
  // deadline, and the job is left with a broken communicator, blamed on a stalled node; Gloo's
  // size checks may abort the process). This node joins that agreement as a node of no GPUs
  // instead: every node then refuses a mix alike, saying why, and nodes all of host memory go
  // on. OK at once elsewhere; once agreed on `collective`, that agreement's outcome.
  absl::Status AgreeHostTransport(const std::shared_ptr<Collective>& collective, uint64_t step,
                                  absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_);
  // The pipeline of one round, run by the last worker to arrive, without mu_ held. `counted`:
  // whether the rule ran (the statistics took the step), which a failure after it leaves true.
  // `given_up`: the earliest of its workers' call deadlines (Step). `unscaled`: the local ranks
  // whose registrations were removed while it ran, whose gradients it left alone.
  absl::Status RunRound(uint64_t step, const WorkerMap& workers, size_t num_groups,
                        absl::Duration timeout, absl::Time given_up, v1::StepResponse* response,
                        bool* counted, std::set<uint32_t>* unscaled) ABSL_LOCKS_EXCLUDED(mu_);
  // Replaces `params` (this step's configuration, of `version`) with node 0's, and the job's
  // with it where they differ (a new version; logged: a multi-node job's configuration is node
  // 0's).
  absl::Status AdoptNodeZerosConfig(Collective* collective, uint64_t step, absl::Duration timeout,
                                    RuleParams* params, uint64_t* version) ABSL_LOCKS_EXCLUDED(mu_);

  const std::string name_;
  const uint32_t local_world_size_;
  CpuExecutor* const executor_;
  const StepCallback on_step_;
  std::atomic<bool> restored_{false};
  std::atomic<bool> import_under_way_{false};
  mutable absl::Mutex owner_mu_;  // taken alone
  std::optional<Principal> owner_ ABSL_GUARDED_BY(owner_mu_);
  absl::Mutex attach_mu_;
  mutable absl::Mutex attaches_mu_;                                      // taken alone
  std::map<uint32_t, uint64_t> attaches_ ABSL_GUARDED_BY(attaches_mu_);  // see Attaches

  mutable absl::Mutex mu_;
  RuleParams params_ ABSL_GUARDED_BY(mu_);
  uint64_t config_version_ ABSL_GUARDED_BY(mu_) = 1;
  std::vector<v1::ConfigChange> config_history_ ABSL_GUARDED_BY(mu_);  // the newest kConfigHistory
  std::vector<std::string> group_names_ ABSL_GUARDED_BY(mu_);
  std::vector<int> group_reduction_ ABSL_GUARDED_BY(mu_);  // -1 unknown, else a v1::Reduction
  std::map<std::string, uint32_t> group_index_ ABSL_GUARDED_BY(mu_);
  // A registration has set the groups' order since the job was made, restored or imported
  // into, or joined its current rendezvous: later ones (a GPU generation's, after the last
  // worker left) keep it.
  bool groups_ordered_ ABSL_GUARDED_BY(mu_) = false;
  mutable std::vector<GroupStats> stats_ ABSL_GUARDED_BY(mu_);
  // The configuration stats_' stabilizer EMAs were built with; AlignStatistics re-expresses
  // them for params_ (a change of beta1, beta2 or bias correction) before they are next used.
  RuleParams stats_params_ ABSL_GUARDED_BY(mu_);
  // The CUDA pipelines when the job's workers registered cuda_ipc buffers; they then own the
  // statistics and stats_ is a copy refreshed on demand.
  mutable GpuWorkers gpus_ ABSL_GUARDED_BY(mu_);
  std::map<uint32_t, std::string> register_again_ ABSL_GUARDED_BY(mu_);  // local rank: why
  // Per local rank, the GPU of its newest cuda_ipc registration, kept past the end of its GPU
  // generation until the rank is removed (Detach waits for its mappings there to close).
  std::map<uint32_t, int> cuda_devices_ ABSL_GUARDED_BY(mu_);
  // Per local rank, a step its pipeline found the nodes disagreeing on, reported after that
  // rank's next step was enqueued: its Step after that is refused before it enqueues anything.
  std::map<uint32_t, uint64_t> gpu_mismatch_ ABSL_GUARDED_BY(mu_);
  std::vector<StepOutcome> last_outcome_ ABSL_GUARDED_BY(mu_);
  WorkerMap workers_ ABSL_GUARDED_BY(mu_);
  // Per local rank, the newest session seen (registered; or ended, then plus one). Unlike
  // workers_, kept when a GPU generation ends.
  std::map<uint32_t, uint64_t> newest_session_ ABSL_GUARDED_BY(mu_);
  // Local ranks whose worker detached, or whose lease expired (true), while other workers of the
  // job stayed, and that have not attached since: a step waiting for one of them is told so at
  // once, rather than at its deadline. Not a worker replaced by a new attach of its rank (a
  // restart). Emptied when the job's last worker leaves (the end of a run: the next run's
  // workers attach one by one).
  std::map<uint32_t, bool> detached_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<Collective> collective_ ABSL_GUARDED_BY(mu_);
  std::string rendezvous_token_ ABSL_GUARDED_BY(mu_);
  v1::RendezvousInfo rendezvous_ ABSL_GUARDED_BY(mu_);  // the current one's (JoinRendezvous)
  NcclRendezvous nccl_ ABSL_GUARDED_BY(mu_);
  bool nccl_spent_ ABSL_GUARDED_BY(mu_) = false;  // a generation of nccl_'s id has ended
  bool agreeing_layout_ ABSL_GUARDED_BY(mu_) = false;  // AgreeGpuLayout waits for the nodes
  // Its failure, and the generation it failed in (GpuWorkers::generations_ended then).
  std::pair<uint64_t, absl::Status> layout_failure_ ABSL_GUARDED_BY(mu_);
  bool sync_statistics_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t steps_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t last_step_ ABSL_GUARDED_BY(mu_) = 0;
  bool have_step_ ABSL_GUARDED_BY(mu_) = false;  // last_step_ is meaningful
  // The step of the statistics the current GPU generation started from (last_step_ then):
  // stats_'s until a step of the generation finishes (CopySnapshot).
  uint64_t gpu_base_step_ ABSL_GUARDED_BY(mu_) = 0;
  // A job across nodes has run a step with its current rendezvous: its nodes' last steps agree.
  bool generation_stepped_ ABSL_GUARDED_BY(mu_) = false;
  // The collective this node's host-memory steps agreed the transport on (AgreeHostTransport),
  // and the outcome: a collective is a rendezvous's, so a new one agrees anew.
  struct HostTransport {
    std::weak_ptr<Collective> on;
    absl::Status outcome;
  };
  HostTransport host_transport_ ABSL_GUARDED_BY(mu_);
  // A replicated group's differing sums across nodes have been logged (once a rendezvous).
  bool replicas_warned_ ABSL_GUARDED_BY(mu_) = false;
  bool local_replicas_warned_ ABSL_GUARDED_BY(mu_) = false;  // said once a job

  // The open round: which step, who has arrived; and the last finished round's result.
  bool round_open_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t round_step_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t round_id_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time round_opened_ ABSL_GUARDED_BY(mu_);  // MonotonicNow() at its first arrival
  bool round_running_ ABSL_GUARDED_BY(mu_) = false;            // its last worker has arrived
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;            // see BeginShutdown
  int importing_ ABSL_GUARDED_BY(mu_) = 0;  // imports waiting between steps: steps wait for them
  // A local worker's Step in the open round: its session, and when its call gives up.
  struct Arrival {
    uint64_t session = 0;
    absl::Time call_deadline;
  };
  std::map<uint32_t, Arrival> arrived_ ABSL_GUARDED_BY(mu_);  // by local rank
  uint64_t finished_round_id_ ABSL_GUARDED_BY(mu_) = 0;
  // A job across nodes: the newest step given up at its arrival deadline (AbandonRound).
  std::optional<uint64_t> abandoned_step_ ABSL_GUARDED_BY(mu_);
  int announcing_ ABSL_GUARDED_BY(mu_) = 0;  // AbandonRound notices under way
  // The round AbandonRound is giving up: its other waiters wait for its outcome.
  std::optional<uint64_t> abandoning_round_ ABSL_GUARDED_BY(mu_);
  // Held while a round uses the node collective (a round's collectives, a given-up round's
  // notice), which takes one caller at a time; taken without mu_.
  absl::Mutex collective_use_;
  absl::Status round_status_ ABSL_GUARDED_BY(mu_);
  std::set<uint32_t> round_unscaled_ ABSL_GUARDED_BY(mu_);  // RunRound's `unscaled`
  // A Step's answer from its round's: not OK for a rank whose gradients the round left alone.
  absl::Status RoundAnswer(uint32_t local_rank, uint64_t step, const absl::Status& status,
                           const std::set<uint32_t>& unscaled) const;
  // GPU reports: tickets handed out (under mu_), and the newest one reported.
  uint64_t gpu_reports_taken_ ABSL_GUARDED_BY(mu_) = 0;
  // The primary's newest finished step as its Step answers it, for a Step that finds nothing
  // new (ReportFinishedGpuSteps took it first); reset when the generation ends.
  std::optional<v1::StepResponse> newest_gpu_report_ ABSL_GUARDED_BY(mu_);
  // Reports of the primary's steps that finished before their generation ended other than by
  // a worker's removal: the next to collect the primary's steps (its Step, the housekeeping)
  // reports them first.
  std::vector<v1::StepResponse> unreported_gpu_steps_ ABSL_GUARDED_BY(mu_);
  absl::Mutex report_mu_ ABSL_ACQUIRED_AFTER(mu_);
  uint64_t gpu_reports_given_ ABSL_GUARDED_BY(report_mu_) = 0;
  mutable absl::Mutex gauge_report_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  v1::StepResponse round_result_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gstab
