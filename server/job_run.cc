// Job's CPU backend: the run of a round all local workers have joined (job_round.cc): partial
// sums per worker, the cross-node sum and agreement, the rule, the scales.
#include <algorithm>
#include <array>
#include <cmath>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "core/config.h"
#include "core/rule.h"
#include "glog/logging.h"
#include "kernels/cpu_kernels.h"
#include "server/cross_node.h"
#include "server/grpc_status.h"
#include "server/job.h"
#include "server/local_work.h"

namespace gstab {
namespace {

// `values` at the indices `shared`, in their order.
template <typename V>
V Pick(const V& values, const std::vector<uint32_t>& shared) {
  V out;
  out.reserve(shared.size());
  for (uint32_t g : shared) out.push_back(values[g]);
  return out;
}

}  // namespace

absl::Status Job::AgreeHostTransport(const std::shared_ptr<Collective>& collective, uint64_t step,
                                     absl::Duration timeout) {
  {
    absl::MutexLock lock(&mu_);
    if (nccl_.unique_id.empty()) return absl::OkStatus();
    // Agreed on this collective (the round's, which a new rendezvous may have replaced as the
    // job's meanwhile: its other nodes still begin with the agreement there): its outcome.
    if (host_transport_.on.lock() == collective) return host_transport_.outcome;
  }
  std::array<double, kGpuLayoutValues> range{};  // no groups, no configuration, no GPUs
  absl::Status outcome = collective->AllReduceMax(absl::MakeSpan(range), timeout);
  if (!outcome.ok()) return NameFailure(collective.get(), name_, step, outcome);
  const double gpus = range[6];  // the most GPUs a node of the job registered
  if (gpus > 0) {
    outcome = absl::FailedPreconditionError(absl::StrCat(
        "job '", name_, "': other nodes registered cuda_ipc buffers (up to ", gpus,
        " GPUs a node), this one host_shm: every node of a job registers its gradients one way; "
        "attach every worker again with a new rendezvous (made with cuda for GPU gradients, "
        "without for host memory)"));
  }
  // Every later step on this collective hears the same: the other nodes take part in no
  // agreement again (the GPU nodes keep their refusal too).
  absl::MutexLock lock(&mu_);
  host_transport_ = {collective, outcome};
  return outcome;
}

absl::Status Job::RefuseAcrossNodes(const std::shared_ptr<Collective>& collective, uint64_t step,
                                    StepCheck check, absl::Duration timeout,
                                    const std::vector<int>& reduction, absl::Status refusal,
                                    absl::Status* told) {
  if (absl::Status s = AgreeHostTransport(collective, step, timeout); !s.ok()) {
    // Refused alike on every node (their communicator intact), or the agreement failed.
    if (told != nullptr) {
      *told = absl::IsFailedPrecondition(s) ? absl::AbortedError(s.message()) : s;
    }
    return refusal;
  }
  check.refused = true;
  const size_t groups = reduction.size();
  NodePartials partials{
      std::vector<double>(groups, 0.0), std::vector<uint32_t>(groups, 0), reduction, {}, {}};
  StepAgreement agreed;
  absl::Status heard =
      ReduceAcrossNodes(collective.get(), name_, step, check, timeout, &partials, &agreed);
  if (told != nullptr) *told = std::move(heard);
  return refusal;
}

absl::Status Job::AdoptNodeZerosConfig(Collective* collective, uint64_t step,
                                       absl::Duration timeout, RuleParams* params,
                                       uint64_t* version) {
  RuleParams node_zeros = *params;
  if (absl::Status s = BroadcastParams(collective, timeout, &node_zeros); !s.ok()) {
    return NameFailure(collective, name_, step, s);
  }
  if (SameEffectiveConfig(node_zeros, *params)) return absl::OkStatus();  // node 0, or alike
  *params = node_zeros;
  absl::MutexLock lock(&mu_);
  TakeNodeZerosConfig(node_zeros, collective->rank(), absl::StrCat("at step ", step));
  // Ours, for node 0's betas, should node 0's statistics not arrive; asked for until they have.
  AlignStatistics();
  sync_statistics_ = true;
  *version = config_version_;
  return absl::OkStatus();
}

absl::Status Job::RunRound(uint64_t step, const WorkerMap& workers, size_t num_groups,
                           absl::Duration timeout, absl::Time given_up, v1::StepResponse* response,
                           bool* counted, std::set<uint32_t>* unscaled) {
  // A worker's call given up (gstabd frozen past its deadline, say): its client has taken the
  // step as lost and zeroed its gradients, and its next backward pass may be writing them.
  auto too_late = [&](const std::string& consequence) -> absl::Status {
    if (absl::Now() < given_up) return absl::OkStatus();
    LOG(WARNING) << "job '" << name_ << "' step " << step
                 << ": a worker's call gave up before it was done; " << consequence;
    return absl::DeadlineExceededError(absl::StrCat(
        "step ", step, " of job '", name_, "' came after a worker's call of it gave up (gstabd ",
        "stalled past the call's deadline); ", consequence));
  };
  // 1. Partial sums per worker, combined per group in local-rank order (deterministic).
  std::vector<double> sums(num_groups, 0.0);
  std::vector<uint32_t> non_finite(num_groups, 0);
  std::vector<bool> present(num_groups, false);
  // Each worker's sums and flags, num_groups of them a worker, in local-rank order.
  std::vector<double> worker_sums(workers.size() * num_groups);
  std::vector<uint32_t> worker_flags(workers.size() * num_groups);
  std::vector<const ChunkTable*> tables;
  for (const auto& [rank, w] : workers) tables.push_back(&w->table);
  std::vector<int> reduction;
  std::shared_ptr<Collective> collective;
  StepCheck check;
  // The groups the cross-node stage carries: those a worker of this node has registered. A
  // group that only an import (on node 0) or a checkpoint brought stays on its node.
  std::vector<uint32_t> shared;
  // The configuration this step runs with: a change made meanwhile counts from the next step
  // (on every node at once: node 0's is every node's, see cross_node.h).
  RuleParams params;
  uint64_t config_version;  // params' version
  {
    absl::MutexLock lock(&mu_);
    reduction.assign(group_reduction_.begin(), group_reduction_.begin() + num_groups);
    collective = collective_;
    AlignStatistics();  // node 0's are aligned before it sends them
    params = params_;
    config_version = config_version_;
    if (collective != nullptr) {
      for (uint32_t g = 0; g < num_groups; ++g) {
        if (reduction[g] >= 0) shared.push_back(g);
      }
      // The group names are copied only when some are left out (not at every step).
      check.layout_hash =
          shared.size() == num_groups
              ? LayoutHash(absl::MakeConstSpan(group_names_.data(), num_groups), reduction)
              : LayoutHash(Pick(group_names_, shared), Pick(reduction, shared));
      check.config_hash = ConfigHash(params);
      check.want_statistics = sync_statistics_;
      if (collective->rank() == 0 && have_step_) check.first_step = last_step_ + 1;
    }
  }
  // A worker may have truncated its shared memory, or punched holes in it: its lost pages would
  // raise SIGBUS in gstabd (survived, server/shm_faults.h, but the touch read zeros).
  // `scaling`: the checks around the scaling, which passes over a registration removed since
  // the round took it (its worker's object is its own again); the sums read every worker's.
  auto check_objects = [&](absl::Status (ShmMapping::*test)() const,
                           bool scaling = false) -> absl::Status {
    for (const auto& [rank, w] : workers) {
      if (scaling && w->removed.load()) continue;
      for (const ShmMapping* object : w->registration.host_objects) {
        if (absl::Status s = (object->*test)(); !s.ok()) {
          return absl::Status(s.code(), absl::StrCat("local rank ", rank, ": ", s.message()));
        }
      }
    }
    return absl::OkStatus();
  };
  // A fault `test` finds in an object fails the step (logged too), and `consequence` says what
  // of it was applied.
  auto check_faults = [&](absl::Status (ShmMapping::*test)() const, const std::string& consequence,
                          bool scaling = false) -> absl::Status {
    absl::Status s = check_objects(test, scaling);
    if (s.ok()) return s;
    LOG(WARNING) << "job '" << name_ << "' step " << step << ": " << s.message();
    return absl::Status(s.code(), absl::StrCat(s.message(), "; ", consequence));
  };
  // The first replicated group whose local workers' sums differ beyond rounding: the first
  // worker's sum (the one taken) against another's.
  struct LocalReplicas {
    uint32_t group, other_rank;
    double first_sum, other_sum;
  };
  std::optional<LocalReplicas> local_replicas;
  auto sum_locally = [&]() -> absl::Status {
    if (absl::Status s = check_objects(&ShmMapping::CheckSize); !s.ok()) {
      return absl::Status(s.code(),
                          absl::StrCat(s.message(), "; nothing was applied to this step"));
    }
    // Every worker's tiles in one parallel loop, then combined in local-rank order.
    std::vector<absl::Span<double>> sum_spans;
    std::vector<absl::Span<uint32_t>> flag_spans;
    for (size_t k = 0; k < workers.size(); ++k) {
      sum_spans.push_back(absl::MakeSpan(worker_sums).subspan(k * num_groups, num_groups));
      flag_spans.push_back(absl::MakeSpan(worker_flags).subspan(k * num_groups, num_groups));
    }
    if (absl::Status s = CpuGroupSumSquaresOfTables(tables, sum_spans, flag_spans, executor_);
        !s.ok()) {
      return s;
    }
    size_t k = 0;
    for (const auto& [rank, w] : workers) {
      for (size_t g = 0; g < w->has_group.size(); ++g) {
        if (!w->has_group[g]) continue;
        const bool replicated = reduction[g] == v1::REDUCTION_REPLICATED;
        if (!replicated || !present[g]) {
          sums[g] += sum_spans[k][g];
        } else if (!local_replicas.has_value() && ReplicaSumsDiffer(sums[g], sum_spans[k][g])) {
          local_replicas = LocalReplicas{static_cast<uint32_t>(g), rank, sums[g], sum_spans[k][g]};
        }
        non_finite[g] |= flag_spans[k][g];
        present[g] = true;
      }
      ++k;
    }
    // After touching the objects: a SIGBUS survived meanwhile.
    return check_faults(&ShmMapping::CheckNotLost, "nothing was applied to this step");
  };
  absl::Status local;
  {
    const LocalWork summing;
    if (!summing.began()) return ShuttingDown(step);  // gstabd is exiting
    local = sum_locally();
  }
  if (local_replicas.has_value()) {
    // The worker whose sum was taken: the first (in local-rank order) with the group.
    uint32_t first_rank = 0;
    for (const auto& [rank, w] : workers) {
      if (local_replicas->group < w->has_group.size() && w->has_group[local_replicas->group]) {
        first_rank = rank;
        break;
      }
    }
    absl::MutexLock lock(&mu_);
    if (!local_replicas_warned_) {
      local_replicas_warned_ = true;
      LOG(WARNING) << "job '" << name_ << "' step " << step << ": replicated group '"
                   << group_names_[local_replicas->group] << "''s sum of squares is "
                   << local_replicas->first_sum << " on local rank " << first_rank << " and "
                   << local_replicas->other_sum << " on local rank " << local_replicas->other_rank
                   << ": its norm is local rank " << first_rank
                   << "'s alone, which the others' gradients do not have. Are they replicas "
                      "(stepped once the data-parallel all-reduce has finished)? Shards are "
                      "registered sharded (the default). Said once a job";
    }
  }
  // Before the check, where a job across nodes can still refuse it on every node (after it, the
  // other nodes apply it: this one then counts it too, below, and scales nothing).
  if (local.ok()) local = too_late("nothing was applied to it");
  if (!local.ok()) {
    if (collective == nullptr) return local;
    return RefuseAcrossNodes(collective, step, check, timeout, reduction, local);
  }

  // 2. Across nodes: one rank per (job, node); nothing changes here when it fails.
  if (collective != nullptr) {
    NodePartials partials{Pick(sums, shared), Pick(non_finite, shared), Pick(reduction, shared),
                          Pick(present, shared), [this, &shared](size_t i) {
                            absl::MutexLock lock(&mu_);
                            return group_names_[shared[i]];
                          }};
    StepAgreement agreed;
    if (absl::Status s = AgreeHostTransport(collective, step, timeout); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("step ", step, " of ", s.message()));
    }
    if (absl::Status s =
            ReduceAcrossNodes(collective.get(), name_, step, check, timeout, &partials, &agreed);
        !s.ok()) {
      return s;
    }
    for (size_t i = 0; i < shared.size(); ++i) {
      sums[shared[i]] = partials.sums[i];
      non_finite[shared[i]] = partials.non_finite[i];
    }
    if (!agreed.replicas_differ.empty()) {
      absl::MutexLock lock(&mu_);
      // Once a rendezvous (it would say the same at every step); not a replaced one's.
      if (!replicas_warned_ && collective_ == collective) {
        replicas_warned_ = true;
        LOG(WARNING) << "job '" << name_ << "' step " << step << ": " << agreed.replicas_differ
                     << ": every node scales it by node 0's norm, which the other nodes' "
                        "gradients do not have. Are they replicas (stepped once the data-parallel "
                        "all-reduce has finished, the same tensors registered alike on every "
                        "node)? Said once a rendezvous";
      }
    }
    if (agreed.configs_differ) {
      if (absl::Status s =
              AdoptNodeZerosConfig(collective.get(), step, timeout, &params, &config_version);
          !s.ok()) {
        return s;
      }
    }
    if (agreed.sync_statistics) {
      std::vector<GroupStats> stats_copy;
      {
        absl::MutexLock lock(&mu_);  // steady: only this round changes them
        stats_copy = Pick(stats_, shared);
      }
      const std::vector<GroupStats> own = stats_copy;
      if (absl::Status s = SyncStatistics(collective.get(), timeout, &stats_copy); !s.ok()) {
        return NameFailure(collective.get(), name_, step, s);
      }
      // Node 0's may be older than this node's (its gstabd restarted from an older checkpoint):
      // the steps between are gone here. Said, since nothing else would show it.
      uint64_t behind = 0;
      for (size_t i = 0; i < own.size(); ++i) {
        if (own[i].steps > stats_copy[i].steps) {
          behind = std::max(behind, own[i].steps - stats_copy[i].steps);
        }
      }
      if (behind > 0) {
        LOG(WARNING) << "job '" << name_ << "' node " << collective->rank() << " step " << step
                     << ": took node 0's statistics, which counted up to " << behind
                     << " steps fewer than this node's (node 0 resumed from an older state: its "
                        "gstabd restarted from an older checkpoint or none, or it imported one"
                     << (behind == 1 ? "; or a step failed on node 0 that this node had applied"
                                     : "")
                     << "): this node's statistics of those steps are gone";
        response->set_statistics_rolled_back(behind);
      }
      absl::MutexLock lock(&mu_);
      for (size_t i = 0; i < shared.size(); ++i) stats_[shared[i]] = stats_copy[i];
      if (collective_ == collective) sync_statistics_ = false;
    }
  }

  // 3. The rule, under the lock: statistics and configuration change only here.
  const LocalWork applying;  // from the rule to the end of the scaling
  if (!applying.began()) {
    if (collective == nullptr) return ShuttingDown(step);
    // Too late to refuse it: the other nodes have agreed on it and apply it.
    return StoppingError(absl::StrCat(
        "gstabd is shutting down; step ", step, " of job '", name_,
        "' was agreed with the job's other nodes, which apply it, but not applied on this "
        "node: its gradients here are unscaled and its statistics behind the other nodes'; "
        "resume the job from its checkpoint once gstabd restarts"));
  }
  std::vector<float> scales(num_groups, 1.0f);
  response->set_step(step);
  {
    absl::MutexLock lock(&mu_);
    // The changes this step runs with take effect here (one made since counts from the next).
    for (v1::ConfigChange& change : config_history_) {
      if (change.version() > 1 && change.version() <= config_version &&
          change.effective_step() == 0) {
        change.set_effective_step(step);
      }
    }
    // A non-finite group skips the whole step: the others' statistics stay as they are.
    bool step_non_finite = false;
    for (size_t g = 0; g < num_groups; ++g) step_non_finite |= present[g] && non_finite[g] != 0;
    for (size_t g = 0; g < num_groups; ++g) {
      if (!present[g]) continue;
      const StepOutcome out =
          ApplyRuleInStep(params, &stats_[g], sums[g], non_finite[g] != 0, step_non_finite);
      last_outcome_[g] = out;
      scales[g] = KernelScale(out.scale);
      v1::GroupResult* r = response->add_groups();
      FillGroupResult(g, out, r);
      r->set_norm_mean(stats_[g].spike_mean);
      r->set_norm_stddev(std::sqrt(stats_[g].spike_var));
      if (r->skipped()) response->set_skip(true);
      if (r->diverging()) response->set_diverging(true);
    }
    response->set_config_version(config_version);
    response->set_results_step(step);
    steps_ += 1;
    last_step_ = step;
    have_step_ = true;
    if (collective_ == collective) generation_stepped_ = collective != nullptr;
    *counted = true;
  }

  // 4. Scale every worker's chunks in place, marked in their progress words around it. Not a
  // worker's that cut its shared memory short since the sums (the cross-node stage lies
  // between): its lost pages would take gstabd's own memory as they were scaled (shm_faults.h).
  const std::string not_scaled = absl::StrCat(
      "step ", step, " counted in the statistics, but no gradients of this node were scaled");
  if (absl::Status s = check_faults(&ShmMapping::CheckSize, not_scaled, /*scaling=*/true);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = too_late(not_scaled); !s.ok()) return s;
  // Not a registration removed since the round took it (its worker detached from another
  // thread, its lease expired, or a registration replacing it was refused: it may be writing
  // that memory again): the cross-node stage may have waited long.
  std::vector<const ChunkTable*> scaled;
  std::vector<uint64_t*> words;
  for (const auto& [rank, w] : workers) {
    if (w->removed.load()) {
      unscaled->insert(rank);
      continue;
    }
    scaled.push_back(&w->table);
    words.push_back(w->registration.progress);
  }
  for (uint64_t* word : words) MarkProgress(word, step, false);
  if (absl::Status s = CpuScaleGroupsOfTables(scaled, scales, executor_); !s.ok()) return s;
  for (uint64_t* word : words) MarkProgress(word, step, true);
  return check_faults(&ShmMapping::CheckNotLost,
                      absl::StrCat("step ", step,
                                   " counted in the statistics, but that worker's gradients were "
                                   "not all scaled"),
                      /*scaling=*/true);
}

}  // namespace gstab
