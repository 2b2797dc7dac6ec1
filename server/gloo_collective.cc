#include "server/gloo_collective.h"

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>
#include <grpcpp/grpcpp.h>

#include <stdexcept>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/token.h"
#include "gstab/v1/stabilizer.grpc.pb.h"

namespace gstab {
namespace {

// gloo::rendezvous::Store over the gstab.v1.Rendezvous service. Gloo reports failures by
// exception, so errors are thrown as std::runtime_error. Every call ends by `deadline` (the
// caller's: Gloo asks for 30 s per call by default, and waits for each peer in turn).
class GrpcStore final : public gloo::rendezvous::Store {
 public:
  GrpcStore(const std::string& address, std::string token, const MutualTls& tls,
            absl::Time deadline, StoreCalls* calls)
      : token_(std::move(token)), deadline_(deadline), calls_(calls) {
    grpc::ChannelArguments args;
    std::shared_ptr<grpc::ChannelCredentials> credentials = MutualTlsChannelCredentials(tls, &args);
    stub_ = v1::Rendezvous::NewStub(grpc::CreateCustomChannel(address, credentials, args));
  }

  // Sets `key` to `value` unless it is set; returns what it holds then.
  std::string Claim(const std::string& key, const std::string& value) {
    v1::StoreSetRequest request;
    request.set_token(token_);
    request.set_key(key);
    request.set_value(value);
    request.set_if_absent(true);
    v1::StoreSetResponse response;
    Check(
        Run(Left(), [&](grpc::ClientContext* c) { return stub_->StoreSet(c, request, &response); }),
        "claim", key);
    return response.value();
  }

  void set(const std::string& key, const std::vector<char>& data) override {
    v1::StoreSetRequest request;
    request.set_token(token_);
    request.set_key(key);
    request.set_value(std::string(data.begin(), data.end()));
    v1::StoreSetResponse response;
    Check(
        Run(Left(), [&](grpc::ClientContext* c) { return stub_->StoreSet(c, request, &response); }),
        "set", key);
  }

  std::vector<char> get(const std::string& key) override {
    wait({key});
    v1::StoreGetRequest request;
    request.set_token(token_);
    request.set_key(key);
    v1::StoreGetResponse response;
    Check(
        Run(Left(), [&](grpc::ClientContext* c) { return stub_->StoreGet(c, request, &response); }),
        "get", key);
    return std::vector<char>(response.value().begin(), response.value().end());
  }

  void wait(const std::vector<std::string>& keys) override { wait(keys, Left()); }

  // Gloo's own timeout is not ours (it passes its pairs', a fifth of the step's; see Connect):
  // a wait takes what is left to the deadline.
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds&) override {
    const std::string first = keys.empty() ? "" : keys[0];
    const std::chrono::milliseconds left = Left();
    v1::StoreWaitRequest request;
    request.set_token(token_);
    for (const std::string& k : keys) request.add_keys(k);
    request.set_timeout_ms(static_cast<uint32_t>(left.count()));
    v1::StoreWaitResponse response;
    Check(Run(left + std::chrono::seconds(1),
              [&](grpc::ClientContext* c) { return stub_->StoreWait(c, request, &response); }),
          "wait for", first);
  }

 private:
  // The time left to the deadline; past it, a millisecond: a key set by then is still found.
  std::chrono::milliseconds Left() const {
    return std::chrono::milliseconds(
        std::max<int64_t>(1, absl::ToInt64Milliseconds(deadline_ - absl::Now())));
  }
  // One call within `timeout`, tracked in calls_ for a stop to cancel; one the stop cancelled
  // says kThisGstabdStopping.
  template <typename Call>
  grpc::Status Run(std::chrono::milliseconds timeout, const Call& call) {
    const grpc::Status stopping(grpc::StatusCode::CANCELLED, kThisGstabdStopping);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + timeout);
    if (calls_ == nullptr) return call(&ctx);
    if (!calls_->Track(&ctx)) return stopping;
    const absl::Cleanup untrack = [&] { calls_->Untrack(&ctx); };
    grpc::Status s = call(&ctx);
    if (s.error_code() == grpc::StatusCode::CANCELLED && calls_->cancelled()) return stopping;
    return s;
  }
  static void Check(const grpc::Status& s, const char* op, const std::string& key) {
    if (s.error_code() == grpc::StatusCode::CANCELLED && s.error_message() == kThisGstabdStopping) {
      throw std::runtime_error(absl::StrCat(kThisGstabdStopping, " (cannot ", op, " '", key,
                                            "' in the rendezvous store)"));
    }
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {  // NameFailure reads this
      throw std::runtime_error(absl::StrCat(kStoreUnreachable, " (cannot ", op, " '", key,
                                            "': ", s.error_message(), ")"));
    }
    if (!s.ok()) {
      // The store's own refusals (an unknown token, its caps) say it is there; anything else
      // (no answer in time, most of all) may be node 0's gstabd gone.
      const bool refused = s.error_code() == grpc::StatusCode::PERMISSION_DENIED ||
                           s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ||
                           s.error_code() == grpc::StatusCode::INVALID_ARGUMENT;
      throw std::runtime_error(absl::StrCat(refused ? kStoreRefused : "rendezvous store",
                                            ": cannot ", op, " '", key, "': ", s.error_message()));
    }
  }

  std::unique_ptr<v1::Rendezvous::Stub> stub_;
  const std::string token_;
  const absl::Time deadline_;
  StoreCalls* const calls_;
};

std::chrono::milliseconds Ms(absl::Duration d) {
  return std::chrono::milliseconds(std::max<int64_t>(1, absl::ToInt64Milliseconds(d)));
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
  const bool timeout = absl::StrContains(e.what(), "imed out") ||
                       absl::StrContains(e.what(), "imeout") ||
                       absl::StrContains(e.what(), "was not set");
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
    GrpcStore store(rendezvous_.store_address(), rendezvous_.token(), tls_, absl::Now() + timeout,
                    calls_.get());
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
    auto context = std::make_shared<gloo::rendezvous::Context>(static_cast<int>(rank_),
                                                               static_cast<int>(size_));
    // A pair waits five times its timeout for its first connection (gloo's tcp::Pair): the
    // pairs get a fifth of the step's, so that a peer that never connects fails the step in
    // its timeout. The collectives then take the whole of it.
    context->setTimeout(Ms(timeout / 5));
    context->connectFullMesh(store, device);
    context->setTimeout(Ms(timeout));
    context_ = std::move(context);
  } catch (const std::exception& e) {
    // A node other than 0 whose own gstabd made the blob: most likely every node made its own,
    // and each waits in a store of its own for nodes that never come there.
    const bool own_store =
        rank_ != 0 && !identity_.empty() && rendezvous_.store_address() == identity_;
    return Broken(absl::StrCat("cannot connect to the job's other nodes",
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
  try {
    GrpcStore store(rendezvous_.store_address(), rendezvous_.token(), tls_, absl::Now() + timeout,
                    calls_.get());
    const std::string prefix = absl::StrCat("failed-at/", step, "/");
    store.set(absl::StrCat(prefix, rank_), {'1'});
    for (uint32_t r = 0; r < size_ && missing.size() < kMaxMissingNamed; ++r) {
      if (r == rank_) continue;
      try {
        store.wait({absl::StrCat(prefix, r)});  // what is left of the timeout
      } catch (const std::exception&) {
        missing.push_back(r);
      }
    }
  } catch (const std::exception& e) {
    // A store that answered with a refusal is there, and blames no node; one that did not
    // answer (unreachable, silent) is node 0's gstabd, missing.
    if (absl::StrContains(e.what(), kStoreRefused)) return absl::UnavailableError(e.what());
    missing.push_back(0);
  }
  return missing;
}

}  // namespace gstab
