#include "server/gloo_store.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <stdexcept>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "common/monotonic_clock.h"
#include "server/collective.h"
#include "server/gloo_collective.h"

namespace gstab {

GrpcStore::GrpcStore(const std::string& address, std::string token, const MutualTls& tls,
                     absl::Time deadline, StoreCalls* calls, absl::Duration wait_part)
    : token_(std::move(token)),
      deadline_(deadline),
      calls_(calls),
      wait_part_(std::max<int64_t>(1, absl::ToInt64Milliseconds(wait_part))) {
  grpc::ChannelArguments args;
  std::shared_ptr<grpc::ChannelCredentials> credentials = MutualTlsChannelCredentials(tls, &args);
  stub_ = v1::Rendezvous::NewStub(grpc::CreateCustomChannel(address, credentials, args));
}

std::string GrpcStore::Claim(const std::string& key, const std::string& value) {
  v1::StoreSetRequest request;
  request.set_token(token_);
  request.set_key(key);
  request.set_value(value);
  request.set_if_absent(true);
  v1::StoreSetResponse response;
  Check(Run(Left(), [&](grpc::ClientContext* c) { return stub_->StoreSet(c, request, &response); }),
        "claim", key);
  return response.value();
}

void GrpcStore::set(const std::string& key, const std::vector<char>& data) {
  v1::StoreSetRequest request;
  request.set_token(token_);
  request.set_key(key);
  request.set_value(std::string(data.begin(), data.end()));
  v1::StoreSetResponse response;
  Check(Run(Left(), [&](grpc::ClientContext* c) { return stub_->StoreSet(c, request, &response); }),
        "set", key);
}

std::vector<char> GrpcStore::get(const std::string& key) {
  wait({key});
  v1::StoreGetRequest request;
  request.set_token(token_);
  request.set_key(key);
  v1::StoreGetResponse response;
  Check(Run(Left(), [&](grpc::ClientContext* c) { return stub_->StoreGet(c, request, &response); }),
        "get", key);
  return std::vector<char>(response.value().begin(), response.value().end());
}

std::vector<std::string> GrpcStore::GetSlices(const std::vector<std::string>& keys,
                                              const std::vector<uint64_t>& offsets,
                                              uint64_t length) {
  if (keys.empty()) return {};
  wait(keys);
  v1::StoreGetRequest request;
  request.set_token(token_);
  for (size_t i = 0; i < keys.size(); ++i) {
    v1::StoreSlice* slice = request.add_slices();
    slice->set_key(keys[i]);
    slice->set_offset(offsets[i]);
    slice->set_length(length);
  }
  v1::StoreGetResponse response;
  Check(Run(Left(), [&](grpc::ClientContext* c) { return stub_->StoreGet(c, request, &response); }),
        "get parts of", keys[0]);
  if (static_cast<size_t>(response.slices_size()) != keys.size()) {
    throw std::runtime_error(absl::StrCat(kStoreRefused, ": a get of ", keys.size(),
                                          " parts answered ", response.slices_size()));
  }
  return {response.slices().begin(), response.slices().end()};
}

void GrpcStore::wait(const std::vector<std::string>& keys) { wait(keys, Left()); }

void GrpcStore::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds&) {
  const std::string first = keys.empty() ? "" : keys[0];
  v1::StoreWaitRequest request;
  request.set_token(token_);
  for (const std::string& k : keys) request.add_keys(k);
  for (;;) {
    const std::chrono::milliseconds left = Left();
    const std::chrono::milliseconds part = std::min(left, wait_part_);
    request.set_timeout_ms(static_cast<uint32_t>(part.count()));
    v1::StoreWaitResponse response;
    const grpc::Status s = Run(part + std::chrono::seconds(1), [&](grpc::ClientContext* c) {
      return stub_->StoreWait(c, request, &response);
    });
    // A part that ended before the deadline: the next one (a step deadline past the store's
    // longest wait, --step_timeout_ms over 10 minutes, waits on).
    if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && part < left) continue;
    Check(s, "wait for", first);
    return;
  }
}

std::chrono::milliseconds GrpcStore::Left() const {
  return std::chrono::milliseconds(
      std::max<int64_t>(1, absl::ToInt64Milliseconds(deadline_ - MonotonicNow())));
}

template <typename Call>
grpc::Status GrpcStore::Run(std::chrono::milliseconds timeout, const Call& call) {
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

void GrpcStore::Check(const grpc::Status& s, const char* op, const std::string& key) {
  if (s.error_code() == grpc::StatusCode::CANCELLED && s.error_message() == kThisGstabdStopping) {
    throw std::runtime_error(absl::StrCat(kThisGstabdStopping, " (cannot ", op, " '", key,
                                          "' in the rendezvous store)"));
  }
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {  // NameFailure reads this
    throw std::runtime_error(
        absl::StrCat(kStoreUnreachable, " (cannot ", op, " '", key, "': ", s.error_message(), ")"));
  }
  if (!s.ok()) {
    // The store's own refusals (an unknown token, its caps, a part past a value's end) say it
    // is there; anything else (no answer in time, most of all) may be node 0's gstabd gone.
    const bool refused = s.error_code() == grpc::StatusCode::PERMISSION_DENIED ||
                         s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ||
                         s.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
                         s.error_code() == grpc::StatusCode::OUT_OF_RANGE;
    throw std::runtime_error(absl::StrCat(refused ? kStoreRefused : "rendezvous store", ": cannot ",
                                          op, " '", key, "': ", s.error_message()));
  }
}

namespace {

std::string MeshKey(int rank) { return absl::StrCat(kMeshKeyPrefix, rank); }

// gloo::Context's device and transport context are its subclasses' to set, once its pairs are
// connected.
class MeshContext final : public gloo::Context {
 public:
  MeshContext(int this_rank, int nodes) : gloo::Context(this_rank, nodes) {}

  void Connect(GrpcStore* store, const std::shared_ptr<gloo::transport::Device>& device,
               std::chrono::milliseconds timeout) {
    std::shared_ptr<gloo::transport::Context> pairs;
    // This node's key: its pairs' addresses in the order of their peers, this node left out.
    std::vector<char> mine;
    size_t record = 0;
    std::vector<std::string> keys;
    try {
      pairs = device->createContext(rank, size);
      pairs->setTimeout(timeout);
      for (int peer = 0; peer < size; ++peer) {
        if (peer == rank) continue;
        const std::vector<char> address = pairs->createPair(peer)->address().bytes();
        if (record != 0 && address.size() != record) {
          throw std::runtime_error(absl::StrCat("Gloo's pair addresses differ in size (",
                                                address.size(), " and ", record, " bytes)"));
        }
        record = address.size();
        mine.insert(mine.end(), address.begin(), address.end());
        keys.push_back(MeshKey(peer));
      }
    } catch (const std::exception& e) {  // a listening socket a pair (out of descriptors, say)
      throw std::runtime_error(absl::StrCat(kMeshNotMade, " (", size - 1, " pairs): ", e.what()));
    }
    store->set(MeshKey(rank), mine);
    // In each peer's key, this node's address is at its rank, less one past the peer's own.
    std::vector<uint64_t> offsets;
    for (int peer = 0; peer < size; ++peer) {
      if (peer != rank) offsets.push_back(uint64_t{record} * (rank > peer ? rank - 1 : rank));
    }
    const std::vector<std::string> addresses = store->GetSlices(keys, offsets, record);
    size_t i = 0;
    for (int peer = 0; peer < size; ++peer) {
      if (peer == rank) continue;
      const std::string& address = addresses[i++];
      if (address.size() != record) {  // the store answers the length asked for, or refuses
        throw std::runtime_error(absl::StrCat("node ", peer, "'s connection record for node ", rank,
                                              " is ", address.size(), " bytes, not ", record));
      }
      pairs->getPair(peer)->connect(std::vector<char>(address.begin(), address.end()));
    }
    device_ = device;
    transportContext_ = std::move(pairs);
  }
};

}  // namespace

std::shared_ptr<gloo::Context> ConnectMesh(GrpcStore* store, int rank, int size,
                                           const std::shared_ptr<gloo::transport::Device>& device,
                                           std::chrono::milliseconds timeout) {
  auto context = std::make_shared<MeshContext>(rank, size);
  context->setTimeout(timeout);
  context->Connect(store, device, timeout);
  return context;
}

}  // namespace gstab
