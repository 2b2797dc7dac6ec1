#include "server/rendezvous_store.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/token.h"
#include "glog/logging.h"
#include "server/collective.h"
#include "server/grpc_status.h"

namespace gstab {

std::string RendezvousStore::NewToken(const std::string& job, uint32_t nodes,
                                      const std::string& owner) {
  const std::string token = RandomToken();
  absl::MutexLock lock(&mu_);
  spaces_[token].max_bytes = MaxBytes(nodes);
  order_.push_back(token);
  by_owner_[owner].push_back(token);
  // Per caller: another caller's rendezvous of the job's name (made before the job is held,
  // when nobody owns it yet) do not push out this one's.
  std::deque<std::string>& own = by_job_[absl::StrCat(owner, "\n", job)];
  own.push_back(token);
  while (own.size() > kPerJob) Forget(own.front());
  while (order_.size() > max_rendezvous_) {
    // Never the one just made: a caller holding no other would be handed a token already gone
    // (of owners holding one each, the first in the map's order went).
    auto most = by_owner_.end();
    for (auto it = by_owner_.begin(); it != by_owner_.end(); ++it) {
      if (it->second.front() == token) continue;
      if (most == by_owner_.end() || it->second.size() > most->second.size()) most = it;
    }
    if (most == by_owner_.end()) break;
    Forget(most->second.front());
  }
  return token;
}

void RendezvousStore::Forget(std::string token) {  // a copy: it may be order_'s own element
  if (auto it = spaces_.find(token); it != spaces_.end()) {
    total_bytes_ -= it->second.bytes;
    spaces_.erase(it);
  }
  WakeWaits(token);  // they report it gone
  order_.erase(std::find(order_.begin(), order_.end(), token));
  for (auto* index : {&by_job_, &by_owner_}) {
    for (auto it = index->begin(); it != index->end(); ++it) {
      auto own = std::find(it->second.begin(), it->second.end(), token);
      if (own == it->second.end()) continue;
      it->second.erase(own);
      if (it->second.empty()) index->erase(it);
      break;
    }
  }
}

bool RendezvousStore::MakeRoom(const std::string& keep, size_t more) {
  if (total_bytes_ + more <= max_total_bytes_) return true;
  std::vector<std::pair<absl::Time, std::string>> idle;  // (last use, token)
  const absl::Time unused_since = MonotonicNow() - idle_evictable_;
  size_t idle_bytes = 0;
  for (const auto& [token, space] : spaces_) {
    if (token != keep && space.bytes > 0 && space.used <= unused_since) {
      idle.emplace_back(space.used, token);
      idle_bytes += space.bytes;
    }
  }
  // None forgotten for nothing: their jobs keep naming a node they lose.
  if (total_bytes_ + more > max_total_bytes_ + idle_bytes) return false;
  std::sort(idle.begin(), idle.end());
  size_t forgotten = 0;
  for (const auto& [used, token] : idle) {
    if (total_bytes_ + more <= max_total_bytes_) break;
    Forget(token);
    ++forgotten;
  }
  if (forgotten > 0) {
    LOG(INFO) << "rendezvous store: forgot " << forgotten << " rendezvous unused for "
              << absl::FormatDuration(idle_evictable_) << " or more to make room (its cap, "
              << (max_total_bytes_ >> 20) << " MiB in all)";
  }
  return total_bytes_ + more <= max_total_bytes_;
}

absl::StatusOr<RendezvousStore::Space*> RendezvousStore::Find(const std::string& token) {
  auto it = spaces_.find(token);
  if (it == spaces_.end()) {
    return absl::PermissionDeniedError(absl::StrCat(
        kUnknownToken,
        ": node 0's store keeps the two newest rendezvous each caller made of a job, up to its "
        "caps over all jobs (a newer blob was made twice since, the caps pushed it out, or node "
        "0's gstabd restarted); make a new one and attach every worker with it"));
  }
  it->second.used = MonotonicNow();
  return &it->second;
}

absl::Status RendezvousStore::Set(const std::string& token, const std::string& key,
                                  const std::string& value, bool if_absent, std::string* holds) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Space*> space = Find(token);
  if (!space.ok()) return space.status();
  Space& s = **space;
  auto it = s.values.find(key);
  if (if_absent && it != s.values.end()) {
    if (holds != nullptr) *holds = it->second;
    return absl::OkStatus();
  }
  if (holds != nullptr) *holds = value;
  const size_t replaced = it == s.values.end() ? 0 : key.size() + it->second.size();
  const size_t bytes = s.bytes - replaced + key.size() + value.size();
  if ((it == s.values.end() && s.values.size() >= kMaxKeys) || bytes > s.max_bytes ||
      (bytes > s.bytes && !MakeRoom(token, bytes - s.bytes))) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "key '", key, "' (", value.size(), " bytes) would pass the store's caps: ", kMaxKeys,
        " keys and ", s.max_bytes, " bytes for this rendezvous, ", max_total_bytes_ >> 20,
        " MiB in all (of rendezvous used in the last ", absl::FormatDuration(idle_evictable_),
        ")"));
  }
  s.values[key] = value;
  total_bytes_ = total_bytes_ - s.bytes + bytes;
  s.bytes = bytes;
  for (auto [w, end] = waiting_.equal_range({token, key}); w != end; ++w) w->second->Signal();
  return absl::OkStatus();
}

absl::StatusOr<std::string> RendezvousStore::Get(const std::string& token, const std::string& key) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Space*> space = Find(token);
  if (!space.ok()) return space.status();
  auto it = (*space)->values.find(key);
  if (it == (*space)->values.end()) {
    return absl::NotFoundError(absl::StrCat("key '", key, "' not set"));
  }
  return it->second;
}

absl::StatusOr<std::vector<std::string>> RendezvousStore::GetSlices(
    const std::string& token, const std::vector<Slice>& slices) {
  uint64_t total = 0;
  for (const Slice& slice : slices) {
    total += std::min<uint64_t>(slice.length, kMaxSliceBytes + 1);
  }
  if (slices.size() > kMaxKeys || total > kMaxSliceBytes) {
    return absl::InvalidArgumentError(absl::StrCat("a get of ", slices.size(), " parts, ", total,
                                                   " bytes: at most ", kMaxKeys, " parts and ",
                                                   kMaxSliceBytes, " bytes"));
  }
  std::vector<std::string> out;
  out.reserve(slices.size());
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Space*> space = Find(token);
  if (!space.ok()) return space.status();
  for (const Slice& slice : slices) {
    auto it = (*space)->values.find(slice.key);
    if (it == (*space)->values.end()) {
      return absl::NotFoundError(absl::StrCat("key '", slice.key, "' not set"));
    }
    const std::string& value = it->second;
    if (slice.offset > value.size() || slice.length > value.size() - slice.offset) {
      return absl::OutOfRangeError(absl::StrCat("key '", slice.key, "' holds ", value.size(),
                                                " bytes, not ", slice.length, " from ",
                                                slice.offset));
    }
    out.push_back(value.substr(slice.offset, slice.length));
  }
  return out;
}

absl::Status RendezvousStore::Wait(const std::string& token, const std::vector<std::string>& keys,
                                   absl::Duration timeout, const std::function<bool()>& cancelled) {
  constexpr absl::Duration kCancelPoll = absl::Milliseconds(100);
  if (keys.size() > kMaxKeys) {  // more than a rendezvous holds: each re-check holds mu_ longer
    return absl::InvalidArgumentError(
        absl::StrCat("a wait for ", keys.size(), " keys; a rendezvous holds at most ", kMaxKeys));
  }
  const absl::Time deadline = MonotonicNow() + timeout;
  absl::MutexLock lock(&mu_);
  if (absl::StatusOr<Space*> space = Find(token); !space.ok()) return space.status();  // used now
  std::string missing;
  // Keys are only set, never unset, while their rendezvous lasts: each check goes on from the
  // first key not yet seen. A wait for every node's key, which each of a job's nodes makes,
  // then costs each Set (which checks every wait) one lookup a wait, not one a key.
  size_t seen = 0;
  auto all_set = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (closed_) return true;  // reported below
    auto it = spaces_.find(token);
    if (it == spaces_.end()) return true;  // reported below
    for (; seen < keys.size(); ++seen) {
      if (it->second.values.count(keys[seen]) == 0) {
        missing = keys[seen];
        return false;
      }
    }
    return true;
  };
  bool done = false;
  absl::CondVar woken;
  for (;;) {
    done = all_set();
    const absl::Duration left = deadline - MonotonicNow();
    if (done || left <= absl::ZeroDuration()) break;
    auto entry = waiting_.emplace(std::make_pair(token, missing), &woken);
    woken.WaitWithTimeout(&mu_, cancelled ? std::min(left, kCancelPoll) : left);
    waiting_.erase(entry);
    if (cancelled && cancelled()) return absl::CancelledError("the wait was cancelled");
  }
  if (closed_) return StoppingError(kStoreStopping);  // read by the other nodes
  if (absl::StatusOr<Space*> space = Find(token); !space.ok()) return space.status();
  if (!done)
    return absl::DeadlineExceededError(absl::StrCat("key '", missing, "' ", kStoreKeyNotSet));
  return absl::OkStatus();
}

void RendezvousStore::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
  WakeWaits("");
}

void RendezvousStore::WakeWaits(const std::string& token) {
  auto it = token.empty() ? waiting_.begin() : waiting_.lower_bound({token, ""});
  for (; it != waiting_.end() && (token.empty() || it->first.first == token); ++it) {
    it->second->Signal();
  }
}

grpc::Status RendezvousService::StoreSet(grpc::ServerContext*, const v1::StoreSetRequest* request,
                                         v1::StoreSetResponse* response) {
  // The value is answered to a claim only (a plain set's would travel back whole: a large job's
  // mesh records, every node's).
  return ToGrpcStatus(store_->Set(request->token(), request->key(), request->value(),
                                  request->if_absent(),
                                  request->if_absent() ? response->mutable_value() : nullptr));
}

grpc::Status RendezvousService::StoreGet(grpc::ServerContext*, const v1::StoreGetRequest* request,
                                         v1::StoreGetResponse* response) {
  if (!request->slices().empty()) {
    if (!request->key().empty())
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "a StoreGet names either a key or slices, not both");
    std::vector<RendezvousStore::Slice> slices;
    slices.reserve(request->slices_size());
    for (const v1::StoreSlice& s : request->slices())
      slices.push_back({s.key(), s.offset(), s.length()});
    absl::StatusOr<std::vector<std::string>> parts = store_->GetSlices(request->token(), slices);
    if (!parts.ok()) return ToGrpcStatus(parts.status());
    for (std::string& part : *parts) response->add_slices(std::move(part));
    return grpc::Status::OK;
  }
  absl::StatusOr<std::string> value = store_->Get(request->token(), request->key());
  if (!value.ok()) return ToGrpcStatus(value.status());
  response->set_value(*std::move(value));
  return grpc::Status::OK;
}

grpc::Status RendezvousService::StoreWait(grpc::ServerContext* context,
                                          const v1::StoreWaitRequest* request,
                                          v1::StoreWaitResponse*) {
  const std::vector<std::string> keys(request->keys().begin(), request->keys().end());
  const absl::Duration timeout = absl::Milliseconds(std::min(request->timeout_ms(), 600000u));
  // A peer that gave up (its own deadline, or it died) ends the wait.
  return ToGrpcStatus(
      store_->Wait(request->token(), keys, timeout, [context] { return context->IsCancelled(); }));
}

}  // namespace gstab
