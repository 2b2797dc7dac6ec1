#include "common/refusal.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/unix_connect.h"

namespace gstab {
namespace {

constexpr absl::string_view kPrefix = "gstabd refused this connection (";
constexpr size_t kMaxLine = 1024;

}  // namespace

void SendRefusal(int fd, absl::string_view reason, absl::string_view why) {
  std::string line = absl::StrCat(kPrefix, reason, "): ", why, "\n");
  if (line.size() > kMaxLine) line.resize(kMaxLine);
  // Best effort: the connection is closed next whatever this does.
  (void)!send(fd, line.data(), line.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
}

std::optional<absl::Status> ProbeRefusal(const std::string& path, absl::Duration wait,
                                         bool* silent) {
  const int fd = ConnectUnix(path);
  if (fd < 0) return std::nullopt;
  std::string got;
  bool timed_out = false;
  // Until the line's end, the connection's end, or `wait`.
  const absl::Time deadline = absl::Now() + wait;
  char buffer[256];
  while (got.size() < kMaxLine && !absl::StrContains(got, '\n')) {
    const absl::Duration left = deadline - absl::Now();
    pollfd pfd{fd, POLLIN, 0};
    const int ready = left <= absl::ZeroDuration()
                          ? 0
                          : poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) {
      timed_out = ready == 0;
      break;
    }
    const ssize_t n = read(fd, buffer, sizeof buffer);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;
    got.append(buffer, static_cast<size_t>(n));
    // Anything else (gRPC's server may speak first, in HTTP/2 frames) is no refusal.
    if (!absl::StartsWith(kPrefix, got.substr(0, kPrefix.size()))) break;
  }
  close(fd);
  if (silent != nullptr) *silent = timed_out && got.empty();
  absl::string_view line = got;
  if (!absl::ConsumePrefix(&line, kPrefix)) return std::nullopt;
  const size_t close_paren = line.find("): ");
  if (close_paren == absl::string_view::npos) return std::nullopt;
  const absl::string_view reason = line.substr(0, close_paren);
  absl::string_view why = line.substr(close_paren + 3);
  why = absl::StripSuffix(why, "\n");
  const std::string message =
      absl::StrCat("gstabd at ", path, " refused this process's connection: ", why);
  if (reason == "per_uid_cap") return absl::ResourceExhaustedError(message);
  return absl::PermissionDeniedError(message);
}

}  // namespace gstab
