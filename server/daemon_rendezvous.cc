// Daemon: the rendezvous that joins a job's daemons across nodes (CreateRendezvous, and each
// worker's blob read and joined on attach: ParseRendezvous, JoinRendezvous).
#include "absl/strings/str_cat.h"
#include "common/token.h"
#include "glog/logging.h"
#include "server/cross_node.h"
#include "server/daemon.h"  // the class whose members these are
#include "server/gloo_collective.h"

namespace gstab {

absl::StatusOr<v1::RendezvousInfo> Daemon::ParseRendezvous(const v1::AttachRequest& request) const {
  v1::RendezvousInfo info;
  if (!info.ParseFromString(request.rendezvous()) || info.format_version() != 1) {
    return absl::InvalidArgumentError(
        "the rendezvous blob is not one gstabd made (pass CreateRendezvous's bytes unchanged)");
  }
  if (info.job() != request.job() || info.node_count() != request.node_count()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the rendezvous blob is for job '", info.job(), "' with ", info.node_count(),
                     " nodes, not job '", request.job(), "' with ", request.node_count()));
  }
  if (options_.peer_host.empty()) {
    return absl::FailedPreconditionError(
        "this gstabd serves no multi-node jobs: start it with --peer_listen=HOST:PORT");
  }
  // Without a token the blob would match a new job's empty one and leave it on one node,
  // summing this node's shards only.
  if (info.token().size() != RandomToken().size() || info.store_address().empty()) {
    return absl::InvalidArgumentError(
        "the rendezvous blob has no rendezvous token or store address (pass CreateRendezvous's "
        "bytes unchanged)");
  }
  if (info.peer_records() != PeerRecordLayout()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the rendezvous blob was made by a gstabd whose cross-node records are laid out as '",
        info.peer_records().empty() ? "(an older release)" : info.peer_records(),
        "', and this gstabd's are '", PeerRecordLayout(),
        "': every node of a job runs the same gstabd release (finish a rollout, then attach "
        "every worker with a new rendezvous)"));
  }
  if (!info.nccl_unique_id().empty() && info.nccl_unique_id().size() != kNcclUniqueIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("the rendezvous blob's NCCL id has ",
                                                   info.nccl_unique_id().size(), " bytes, not ",
                                                   kNcclUniqueIdBytes));
  }
  return info;
}

absl::Status Daemon::JoinRendezvous(const v1::AttachRequest& request,
                                    const v1::RendezvousInfo& info, Job* job) {
  // The job compares the token and the node under its lock: two attaches with one new blob
  // race, and the second must find the first's node.
  NcclRendezvous nccl;
  nccl.unique_id = info.nccl_unique_id();
  nccl.node_rank = request.node_rank();
  nccl.node_count = request.node_count();
  nccl.timeout = options_.step_timeout;
  std::string identity;
  {
    absl::MutexLock lock(&mu_);
    identity = peer_address_;
  }
  const bool joined = job->rendezvous_token() == info.token();
  if (absl::Status s = job->JoinRendezvous(
          std::make_shared<GlooCollective>(info, request.node_rank(), options_.peer_host,
                                           options_.peer_tls, std::move(identity), store_calls_),
          info, std::move(nccl));
      !s.ok() || joined) {
    return s;
  }
  LOG(INFO) << "job '" << request.job() << "' joins rendezvous generation " << info.generation()
            << " as node " << request.node_rank() << " of " << info.node_count();
  return absl::OkStatus();
}

void Daemon::CancelStoreCalls() { store_calls_->CancelAll(); }

absl::Status Daemon::CreateRendezvous(const v1::CreateRendezvousRequest& request,
                                      v1::CreateRendezvousResponse* response,
                                      const std::optional<Principal>& caller) {
  if (absl::Status s = ValidateJobName(request.job()); !s.ok()) return s;
  if (request.node_count() < 1 || request.node_count() > options_.max_nodes) {
    return absl::InvalidArgumentError(absl::StrCat("node_count must be 1 to ", options_.max_nodes,
                                                   " (--max_nodes), not ", request.node_count()));
  }
  std::string peer_address;
  {
    absl::MutexLock lock(&mu_);
    // A new rendezvous pushes out the job's older ones: the job's own callers only.
    if (absl::Status s =
            OwnerRefusal(request.job(), OwnerOf(request.job()), caller, "make its rendezvous");
        !s.ok()) {
      return s;
    }
    peer_address = peer_address_;
  }
  if (peer_address.empty()) {
    return absl::FailedPreconditionError(
        "this gstabd serves no multi-node jobs: start it with --peer_listen=HOST:PORT");
  }
  v1::RendezvousInfo info;
  if (request.cuda()) {
    if (gpu_.new_nccl_id == nullptr) {
      return absl::FailedPreconditionError(
          "a rendezvous for a CUDA job needs a gstabd with the CUDA backend (--backend=cuda on a "
          "machine with a GPU)");
    }
    // Not under mu_: NCCL's first id sets up its networking, which every RPC would wait for.
    absl::StatusOr<std::string> id = gpu_.new_nccl_id();
    if (!id.ok()) return id.status();
    info.set_nccl_unique_id(*std::move(id));
  }
  info.set_format_version(1);
  info.set_store_address(peer_address);
  info.set_token(rendezvous_store_.NewToken(request.job(), request.node_count(),
                                            caller.has_value() ? caller->ToString() : ""));
  info.set_job(request.job());
  {
    absl::MutexLock lock(&mu_);
    info.set_generation(++rendezvous_made_);
  }
  info.set_store_started_us(static_cast<uint64_t>(absl::ToUnixMicros(started_)));
  info.set_peer_records(PeerRecordLayout());
  info.set_node_count(request.node_count());
  response->set_rendezvous(info.SerializeAsString());
  return absl::OkStatus();
}

}  // namespace gstab
