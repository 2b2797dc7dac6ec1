#include "server/gloo_collective.h"

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/transport/tcp/device.h>
#include <grpcpp/grpcpp.h>

#include <optional>
#include <stdexcept>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/monotonic_clock.h"
#include "common/token.h"
#include "gstab/v1/stabilizer.grpc.pb.h"
#include "server/gloo_store.h"

namespace gstab {
namespace {

std::chrono::milliseconds Ms(absl::Duration d) {
  return std::chrono::milliseconds(std::max<int64_t>(1, absl::ToInt64Milliseconds(d)));
}

// The node whose key (`prefix` and its rank) a failed store wait names as not set, if it names
// one: "key 'failed-at/7/3' was not set" (RendezvousStore::Wait).
std::optional<uint32_t> UnsetNode(absl::string_view failure, absl::string_view prefix) {
  const std::string quoted = absl::StrCat("key '", prefix);
  const size_t at = failure.find(quoted);
  if (at == absl::string_view::npos) return std::nullopt;
  absl::string_view rest = failure.substr(at + quoted.size());
  const size_t end = rest.find('\'');
  uint32_t node = 0;
  if (end == absl::string_view::npos || !absl::SimpleAtoi(rest.substr(0, end), &node)) {
    return std::nullopt;
  }
  return node;
}

}  // namespace

void StoreCalls::CancelAll() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  for (grpc::ClientContext* call : calls_) call->TryCancel();
}

bool StoreCalls::Track(grpc::ClientContext* call) {
  absl::MutexLock lock(&mu_);
  if (cancelled_) return false;
  calls_.insert(call);
  return true;
}

void StoreCalls::Untrack(grpc::ClientContext* call) {
  absl::MutexLock lock(&mu_);
  calls_.erase(call);
}

bool StoreCalls::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

GlooCollective::GlooCollective(const v1::RendezvousInfo& rendezvous, uint32_t rank,
                               std::string bind_host, MutualTls tls, std::string identity,
                               std::shared_ptr<StoreCalls> calls)
    : rendezvous_(rendezvous),
      rank_(rank),
      size_(rendezvous.node_count()),
      bind_host_(std::move(bind_host)),
      tls_(std::move(tls)),
      identity_(std::move(identity)),
      calls_(std::move(calls)) {}

GlooCollective::~GlooCollective() = default;

absl::Status GlooCollective::Broken(const std::string& what, const std::exception& e) {
  broken_ = absl::StrCat(what, ": ", e.what());
  context_.reset();
  // Gloo's words for a wait that ran out, and gRPC's for the store's ("Deadline Exceeded").
  const bool timeout = absl::StrContains(e.what(), "imed out") ||
                       absl::StrContains(e.what(), "imeout") ||
                       absl::StrContains(e.what(), "Deadline Exceeded") ||
                       absl::StrContains(e.what(), kStoreKeyNotSet);
  return timeout ? absl::DeadlineExceededError(broken_) : absl::UnavailableError(broken_);
}

absl::Status GlooCollective::Connect(absl::Duration timeout) {
  if (!broken_.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the job's cross-node communicator failed earlier (", broken_,
                     "); attach every worker again with a new rendezvous"));
  }
  if (context_ != nullptr) return absl::OkStatus();
  // This node's own fault, said as such before any other node is asked about: the address
  // gstabd's --peer_listen names is gone from this machine (a pod's or host's address changed).
  std::shared_ptr<gloo::transport::Device> device;
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = bind_host_;
    device = gloo::transport::tcp::CreateDevice(attr);
  } catch (const std::exception& e) {
    broken_ = absl::StrCat("this node cannot listen for the job's other nodes on ", bind_host_,
                           " (gstabd's --peer_listen host): ", e.what());
    return absl::FailedPreconditionError(broken_);
  }
  try {
    GrpcStore store(rendezvous_.store_address(), rendezvous_.token(), tls_,
                    MonotonicNow() + timeout, calls_.get());
    if (!identity_.empty()) {
      // Two gstabds of one rank would overwrite each other's addresses in the store, and every
      // node would wait out its timeout: the second is told at once. So is this gstabd when
      // an earlier communicator of its own used this rendezvous (the job forgotten and attached
      // again, or gstabd restarted, with the same blob): Gloo's records of that one are still
      // in the store, and the nodes would dial stale addresses.
      const std::string claim = absl::StrCat(identity_, "#", RandomToken());
      const std::string holder = store.Claim(absl::StrCat("node-rank/", rank_), claim);
      if (holder != claim) {
        const std::string holder_at = holder.substr(0, holder.rfind('#'));
        broken_ =
            holder_at == identity_
                ? absl::StrCat("this rendezvous of job '", rendezvous_.job(),
                               "' was used already on this node (by an earlier attach: the job "
                               "was forgotten, or this gstabd restarted, since); make a new "
                               "rendezvous and attach every worker with it")
                : absl::StrCat("node_rank ", rank_, " of job '", rendezvous_.job(),
                               "' is taken by the gstabd at ", holder_at, " (this one is at ",
                               identity_,
                               "): each node of a job attaches with a node_rank of its own, 0 to ",
                               size_ - 1,
                               " (or this gstabd restarted: attach every worker again with a new "
                               "rendezvous)");
        return absl::FailedPreconditionError(broken_);
      }
    }
    // A pair waits five times its timeout for its first connection (gloo's tcp::Pair): the
    // pairs get a fifth of the step's, so that a peer that never connects fails the step in
    // its timeout. The collectives then take the whole of it.
    std::shared_ptr<gloo::Context> context = ConnectMesh(
        &store, static_cast<int>(rank_), static_cast<int>(size_), device, Ms(timeout / 5));
    context->setTimeout(Ms(timeout));
    context_ = std::move(context);
    connected_ = true;
  } catch (const std::exception& e) {
    // Its connections not made (out of descriptors, say): this node's own fault, said as such.
    if (absl::StrContains(e.what(), kMeshNotMade)) {
      broken_ = absl::StrCat("this node cannot connect to the job's other nodes: ", e.what());
      return absl::FailedPreconditionError(broken_);
    }
    // A node other than 0 whose own gstabd made the blob: most likely every node made its own,
    // and each waits in a store of its own for nodes that never come there.
    const bool own_store =
        rank_ != 0 && !identity_.empty() && rendezvous_.store_address() == identity_;
    return Broken(absl::StrCat(kCannotConnect,
                               own_store ? " (this node's own gstabd made the rendezvous blob: "
                                           "if every node made its own, make it once, on node "
                                           "0's, and pass it to every node)"
                                         : ""),
                  e);
  }
  return absl::OkStatus();
}

absl::Status GlooCollective::AllReduce(absl::Span<double> values, bool max,
                                       absl::Duration timeout) {
  if (absl::Status s = Connect(timeout); !s.ok()) return s;
  try {
    gloo::AllreduceOptions opts(context_);
    opts.setOutput(values.data(), values.size());  // no input: in place
    if (max) {
      opts.setReduceFunction(
          static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::max<double>));
    } else {
      opts.setReduceFunction(
          static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<double>));
    }
    opts.setTimeout(Ms(timeout));
    gloo::allreduce(opts);
  } catch (const std::exception& e) {
    return Broken("cross-node all-reduce failed", e);
  }
  return absl::OkStatus();
}

absl::Status GlooCollective::AllReduceSum(absl::Span<double> values, absl::Duration timeout) {
  return AllReduce(values, false, timeout);
}

absl::Status GlooCollective::AllReduceMax(absl::Span<double> values, absl::Duration timeout) {
  return AllReduce(values, true, timeout);
}

absl::Status GlooCollective::Broadcast(absl::Span<char> bytes, absl::Duration timeout) {
  if (absl::Status s = Connect(timeout); !s.ok()) return s;
  try {
    gloo::BroadcastOptions opts(context_);
    opts.setOutput(bytes.data(), bytes.size());
    opts.setRoot(0);
    opts.setTimeout(Ms(timeout));
    gloo::broadcast(opts);
  } catch (const std::exception& e) {
    return Broken("cross-node broadcast failed", e);
  }
  return absl::OkStatus();
}

absl::Status GlooCollective::AllGather(absl::Span<const char> mine, absl::Span<char> all,
                                       absl::Duration timeout) {
  if (all.size() != mine.size() * size_) {
    return absl::InternalError(absl::StrCat("all-gather of ", mine.size(), " bytes from ", size_,
                                            " nodes into ", all.size(), " bytes"));
  }
  if (absl::Status s = Connect(timeout); !s.ok()) return s;
  try {
    gloo::AllgatherOptions opts(context_);
    opts.setInput(const_cast<char*>(mine.data()), mine.size());  // Gloo only reads it
    opts.setOutput(all.data(), all.size());
    opts.setTimeout(Ms(timeout));
    gloo::allgather(opts);
  } catch (const std::exception& e) {
    return Broken("cross-node all-gather failed", e);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint32_t>> GlooCollective::MissingNodes(uint64_t step,
                                                                   absl::Duration timeout) {
  std::vector<uint32_t> missing;
  bool answered = false;  // the store answered a call of this search
  try {
    GrpcStore store(rendezvous_.store_address(), rendezvous_.token(), tls_,
                    MonotonicNow() + timeout, calls_.get());
    const std::string failed_at = absl::StrCat("failed-at/", step, "/");
    store.set(absl::StrCat(failed_at, rank_), {'1'});
    answered = true;
    // A failure as the mesh connects (the generation's first step) does not reach the other
    // nodes, which each wait out their own timeout: a node that came late but came would be
    // named for not reporting within the diagnosis' second. Those that never came to connect
    // are named instead: each sets its key of the mesh as it comes.
    const std::string prefix = connected_ ? failed_at : kMeshKeyPrefix;
    // One wait for every node's key from `next` on (what is left of the timeout): the store
    // names the first not set, whose node is missing, and the keys before it are set. Store calls
    // a search: the missing nodes named, plus one (not one a node: 1,023 each of 1,024 nodes,
    // all at node 0's store).
    uint32_t next = rank_ == 0 ? 1 : 0;
    while (next < size_ && missing.size() < kMaxMissingNamed) {
      std::vector<std::string> keys;
      for (uint32_t r = next; r < size_; ++r) {
        if (r != rank_) keys.push_back(absl::StrCat(prefix, r));
      }
      try {
        store.wait(keys);
        break;  // the rest are set
      } catch (const std::exception& e) {
        // Only a wait the store ended unmet names a node; any other failure is the store's or
        // this gstabd's (below).
        if (!absl::StrContains(e.what(), kStoreKeyNotSet)) throw;
        // A key not named, or not one asked for: the store could not say which.
        const std::optional<uint32_t> unset = UnsetNode(e.what(), prefix);
        if (!unset.has_value() || *unset < next || *unset >= size_ || *unset == rank_) throw;
        missing.push_back(*unset);
        next = *unset + 1 == rank_ ? *unset + 2 : *unset + 1;
      }
    }
  } catch (const std::exception& e) {
    // A store that answered with a refusal is there, and blames no node, nor does this
    // gstabd's stop, nor a store that answered this search before failing (the nodes named so
    // far would be half the answer); one that never answered (unreachable, silent) is node 0's
    // gstabd, missing.
    if (absl::StrContains(e.what(), kStoreRefused) ||
        absl::StrContains(e.what(), kThisGstabdStopping) || answered) {
      return absl::UnavailableError(e.what());
    }
    missing.push_back(0);
  }
  return missing;
}

}  // namespace gstab
