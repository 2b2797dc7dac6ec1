// What gstabctl's commands share: its output conventions, its connection to gstabd, and the
// flags these read.
#pragma once

#include <sys/types.h>

#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client_lib/client.h"
#include "gstab/v1/stabilizer.pb.h"

ABSL_DECLARE_FLAG(std::string, socket);
ABSL_DECLARE_FLAG(bool, json);
ABSL_DECLARE_FLAG(std::string, job);
ABSL_DECLARE_FLAG(int, timeout_s);

namespace gstab::ctl {

// The reason on stderr; exit status 1.
int Fail(const absl::Status& status);
// A bad command line: the reason and the usage on stderr; exit status 2.
int Usage(const std::string& why);
// `message` as JSON, every field (defaults too).
std::string Json(const google::protobuf::Message& message);
// `call()`'s status, called again while gstabd answers one of `codes` and says "try again" (a
// state of a moment: a job being retired, a multi-GPU job's GPUs between two steps), every 20 ms
// to 200 ms, for --timeout_s (a try begun before then waits its own --timeout_s at most).
absl::Status TryAgainWhileBusy(std::initializer_list<absl::StatusCode> codes,
                               const std::function<absl::Status()>& call);
// Whether stdout took everything printed so far (a full disk, a closed pipe: it did not).
bool StdoutWritten();
// Whether stdout is a pipe (or socket) whose reader has gone, waiting up to `wait_ms` for it to go.
bool StdoutReaderGone(int wait_ms);
// The exit status once stdout failed: 141 (128 + SIGPIPE) for a closed pipe, as a process that
// died of the signal gives (gstabctl ignores SIGPIPE, so that it detaches first); else 1, the
// reason on stderr.
int StdoutFailed();

// What a command did: `text` for people, or with --json the same as one JSON object of `fields`
// (strings, numbers and booleans); exit status 0.
using JsonValue = std::variant<std::string, double, bool>;
int Done(const std::string& text, const std::vector<std::pair<std::string, JsonValue>>& fields,
         std::FILE* out = stdout);

// A client of --socket ($GSTAB_SOCKET, else gstabd's default socket).
absl::StatusOr<std::unique_ptr<Client>> Connect();

// Blocks SIGINT, SIGTERM and SIGHUP (those the caller did not set to be ignored: `nohup`, a
// shell's background job) for every thread gstabctl starts (call it first), and takes them on
// a thread of its own: it detaches the observer session open then (ConnectToJob's), and then
// gstabctl dies of the signal as it would have. SIGPIPE is ignored: a write to a closed pipe
// fails (StdoutFailed) and the command detaches on its way out.
void HandleStopSignals();

// A client attached as an observer of --job, detached when it goes, on every path (a signal
// included): a session left to its lease would keep the job from `forget` and from retiring
// meanwhile.
struct DetachFirst {
  void operator()(Client* client) const;
};
using Observer = std::unique_ptr<Client, DetachFirst>;
absl::StatusOr<Observer> ConnectToJob();

absl::StatusOr<v1::ListJobsResponse> ListJobs(Client* client, uint32_t history,
                                              bool include_retired = false);
// Keeps `job` alone in `jobs`.
void OnlyJob(v1::ListJobsResponse* jobs, const std::string& job);

}  // namespace gstab::ctl
