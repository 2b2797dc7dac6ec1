// The one place where absl::Status becomes grpc::Status.
#pragma once

#include <grpcpp/support/status.h>

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace gstab {

// A status message travels in gRPC's metadata, which a client refuses past 8 KiB (percent-encoded:
// up to three bytes a byte). A longer one, quoting something huge a caller sent, keeps its head
// and tail, within this many bytes and a note of what was left out.
inline constexpr size_t kMaxStatusMessageBytes = 2048;
std::string CutStatusMessage(absl::string_view message);

// With error details (a google.rpc.Status of the code), by which a client tells gstabd's answer
// from gRPC's own errors.
grpc::Status ToGrpcStatus(const absl::Status& status);

// UNAVAILABLE because gstabd is stopping (a planned restart, a rollout): its workers attach
// again by themselves. Such answers are not counted in gstab_rpc_errors_total, so that alerts
// on failing calls do not fire at every restart.
absl::Status StoppingError(absl::string_view message);
// Whether an answer counts as an error in gstab_rpc_errors_total (an error, not StoppingError's).
bool CountsAsRpcError(const absl::Status& status);

}  // namespace gstab
