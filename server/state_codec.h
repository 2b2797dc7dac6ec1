// Conversion between core GroupStats and their persisted form (gstab.v1.GroupState), used by
// checkpoints and ExportState / ImportState. Thread-safe.
#pragma once

#include <string>

#include "core/rule_types.h"
#include "gstab/v1/stabilizer.pb.h"

namespace gstab {

inline constexpr uint32_t kJobStateFormatVersion = 1;

v1::GroupState GroupStateToProto(const std::string& name, const GroupStats& stats);
GroupStats GroupStateFromProto(const v1::GroupState& state);

}  // namespace gstab
