// A CUDA Step that gstabd failed after it had queued part of the step on its stream: it writes
// the step's done word behind what it queued, and says so in its error (an absl::Status payload
// in gstabd, a google.rpc.Any of this type among the answer's error details on the wire), so
// that the worker's stream waits for that word before touching the gradients.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"

namespace gstab {

inline constexpr char kDoneWrittenType[] = "type.gstab.dev/done-written";

inline void MarkDoneWritten(absl::Status* status) {
  if (!status->ok()) status->SetPayload(kDoneWrittenType, absl::Cord());
}

inline bool DoneWritten(const absl::Status& status) {
  return status.GetPayload(kDoneWrittenType).has_value();
}

// The bytes of a google.rpc.Status's detail (field 3) holding an Any of that type, without a
// value: what gstabd appends to its error details.
inline std::string DoneWrittenDetail() {
  constexpr size_t kType = sizeof kDoneWrittenType - 1;  // below 128: one-byte lengths
  static_assert(kType + 2 < 128);
  return std::string{'\x1a', static_cast<char>(kType + 2), '\x0a', static_cast<char>(kType)} +
         kDoneWrittenType;
}

inline bool DetailsSayDoneWritten(absl::string_view details) {
  return absl::StrContains(details, DoneWrittenDetail());
}

}  // namespace gstab
