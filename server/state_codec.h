// Conversion between core GroupStats and their persisted form (gstab.v1.GroupState), used by
// checkpoints and ExportState / ImportState. Thread-safe.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/rule_types.h"
#include "gstab/v1/stabilizer.pb.h"

namespace gstab {

inline constexpr uint32_t kJobStateFormatVersion = 1;
// Norm groups one job may have (registrations and imports together).
inline constexpr size_t kMaxGroupsPerJob = 65536;
// Step numbers, and a group's step counts, are below this: a step passed as a negative number
// made unsigned would otherwise set the job's step count past every later step.
inline constexpr uint64_t kStepLimit = uint64_t{1} << 62;

// INVALID_ARGUMENT, saying so, for a step number of kStepLimit or more.
absl::Status CheckStepNumber(uint64_t step);

// INVALID_ARGUMENT, naming the group and field, unless `state` is one gstabd could have
// written: of kJobStateFormatVersion, with at most kMaxGroupsPerJob groups of valid, distinct
// names, finite statistics, non-negative means and variances, and step counts and the last step
// below kStepLimit. Imported statistics feed the scale of every later step: a NaN or negative
// variance would turn gradients into NaN.
absl::Status ValidateJobState(const v1::JobState& state);

// The bytes gstabd writes for `state` (a checkpoint's file, an export): its serialization,
// led by JobState.checksum over the rest (its key and 8 bytes: kEncodedChecksumBytes).
inline constexpr size_t kEncodedChecksumBytes = 1 + 8;
std::string EncodeJobState(v1::JobState state);
// `bytes` as a JobState. DATA_LOSS when they lead with a checksum that does not match (cut
// short, or changed: `what` names them in the message), INVALID_ARGUMENT when they are no
// JobState at all. Bytes without a checksum (an older gstabd's, which begin with
// format_version) are read unchecked. Says nothing of the state's values: ValidateJobState
// does.
absl::StatusOr<v1::JobState> DecodeJobState(absl::string_view bytes, absl::string_view what);

v1::GroupState GroupStateToProto(const std::string& name, const GroupStats& stats);
GroupStats GroupStateFromProto(const v1::GroupState& state);

}  // namespace gstab
