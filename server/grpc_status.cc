#include "server/grpc_status.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/done_written.h"

namespace gstab {
namespace {

// Backs up from `at` to the start of the UTF-8 character there (at most 3 bytes back: past
// that, the text is not UTF-8, and `at` is as good a cut as any).
size_t CharacterStart(absl::string_view text, size_t at) {
  for (int back = 0; back < 3 && at > 0 && at < text.size() &&
                     (static_cast<unsigned char>(text[at]) & 0xC0) == 0x80;
       ++back) {
    --at;
  }
  return at;
}

}  // namespace

std::string CutStatusMessage(absl::string_view message) {
  if (message.size() <= kMaxStatusMessageBytes) return std::string(message);
  // The head says what was wrong and the tail what to do: the middle is a name or a value the
  // caller sent (a 100 KB job name, say), which it has anyway.
  constexpr size_t kHead = kMaxStatusMessageBytes / 2, kTail = kMaxStatusMessageBytes / 4;
  const size_t head = CharacterStart(message, kHead);
  const size_t tail = CharacterStart(message, message.size() - kTail);
  return absl::StrCat(message.substr(0, head), " [... ", tail - head, " bytes left out ...] ",
                      message.substr(tail));
}

namespace {
constexpr char kStoppingPayload[] = "type.gstab.dev/gstabd-stopping";
}  // namespace

absl::Status StoppingError(absl::string_view message) {
  absl::Status status = absl::UnavailableError(message);
  status.SetPayload(kStoppingPayload, absl::Cord());
  return status;
}

bool CountsAsRpcError(const absl::Status& status) {
  return !status.ok() && !status.GetPayload(kStoppingPayload).has_value();
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl::StatusCode and grpc::StatusCode share their numeric values (both follow
  // google.rpc.Code). The details, a google.rpc.Status of the code alone (field 1, a varint
  // below 128), say that gstabd answered: gRPC's own errors (a connection gone) have none,
  // whatever their words.
  // A CUDA step failed part way says that its done word is written all the same.
  const auto code = static_cast<int>(status.code());
  std::string details{'\x08', static_cast<char>(code)};
  if (DoneWritten(status)) details += DoneWrittenDetail();
  return grpc::Status(static_cast<grpc::StatusCode>(code), CutStatusMessage(status.message()),
                      details);
}

}  // namespace gstab
