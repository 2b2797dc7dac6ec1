// Who acts on a job, and whom a job belongs to (gstabd --jobs_by_uid): a process through
// gstabd's unix socket, by its uid (SO_PEERCRED), or a client through its TCP port (--listen),
// by the name of the certificate it showed: the first of its SPIFFE ID, subject common name
// (CN), first DNS name and first email address (StabilizerService::Caller).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace gstab {

struct Principal {
  enum class Kind { kUid, kCertificate };

  static Principal Uid(uint32_t uid) { return {Kind::kUid, uid, {}}; }
  static Principal Certificate(std::string name) {
    return {Kind::kCertificate, 0, std::move(name)};
  }

  bool is_certificate() const { return kind == Kind::kCertificate; }
  // A certificate with neither name: it cannot own a job.
  bool nameless() const { return is_certificate() && certificate.empty(); }
  // "uid 1000", "certificate 'alice'", "a certificate without a name".
  std::string ToString() const {
    if (nameless()) return "a certificate without a name";
    return is_certificate() ? absl::StrCat("certificate '", certificate, "'")
                            : absl::StrCat("uid ", uid);
  }
  bool operator==(const Principal& o) const {
    return kind == o.kind && uid == o.uid && certificate == o.certificate;
  }
  bool operator!=(const Principal& o) const { return !(*this == o); }

  Kind kind = Kind::kUid;
  uint32_t uid = 0;         // kUid
  std::string certificate;  // kCertificate: its name; empty: it has none
};

// The owner in a JobState or JobSummary (their fields owner_uid and owner_certificate), if any.
template <class Message>
std::optional<Principal> OwnerIn(const Message& m) {
  if (m.has_owner_certificate()) return Principal::Certificate(m.owner_certificate());
  if (m.has_owner_uid()) return Principal::Uid(m.owner_uid());
  return std::nullopt;
}

template <class Message>
void SetOwnerIn(const std::optional<Principal>& owner, Message* m) {
  if (!owner.has_value()) return;
  if (owner->is_certificate()) {
    m->set_owner_certificate(owner->certificate);
  } else {
    m->set_owner_uid(owner->uid);
  }
}

}  // namespace gstab
