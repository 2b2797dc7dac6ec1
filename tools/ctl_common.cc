#include "tools/ctl_common.h"

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client_lib/config_text.h"
#include "google/protobuf/struct.pb.h"
#include "tools/ctl_files.h"

namespace gstab::ctl {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "gstabctl: %s\n", std::string(status.message()).c_str());
  return 1;
}

int Usage(const std::string& why) {
  std::fprintf(stderr,
               "gstabctl: %s\nusage: gstabctl [flags] health|version|status|events|top|config "
               "set KEY=VALUE...|config show|export|import|forget|rendezvous (see --help)\n",
               why.c_str());
  return 2;
}

std::string Json(const google::protobuf::Message& message) {
  return ToJson(message, /*with_defaults=*/true);
}

absl::Status TryAgainWhileBusy(std::initializer_list<absl::StatusCode> codes,
                               const std::function<absl::Status()>& call) {
  const absl::Time deadline = absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_timeout_s));
  absl::Duration pause = absl::Milliseconds(20);
  while (true) {
    absl::Status s = call();
    if (std::find(codes.begin(), codes.end(), s.code()) == codes.end() ||
        !absl::StrContains(s.message(), "try again") || absl::Now() + pause >= deadline) {
      return s;
    }
    absl::SleepFor(pause);
    pause = std::min(2 * pause, absl::Milliseconds(200));
  }
}

namespace {
int stdout_errno = 0;  // why stdout last failed (errno changes meanwhile)
}  // namespace

bool StdoutWritten() {
  if (std::fflush(stdout) != 0 && stdout_errno == 0) stdout_errno = errno;
  return !std::ferror(stdout);
}

bool StdoutReaderGone(int wait_ms) {
  pollfd out = {STDOUT_FILENO, 0, 0};  // POLLERR and POLLHUP come unasked
  return ::poll(&out, 1, wait_ms) > 0 && (out.revents & (POLLERR | POLLHUP)) != 0;
}

int StdoutFailed() {
  // A pipe whose reader is gone says so itself (errno may be a later call's by now).
  if (stdout_errno == EPIPE || StdoutReaderGone(0)) return 128 + SIGPIPE;
  std::fprintf(stderr, "gstabctl: cannot write to stdout: %s\n",
               stdout_errno != 0 ? std::strerror(stdout_errno) : "an earlier write failed");
  return 1;
}

int Done(const std::string& text, const std::vector<std::pair<std::string, JsonValue>>& fields,
         std::FILE* out) {
  if (!absl::GetFlag(FLAGS_json)) {
    std::fprintf(out, "%s\n", text.c_str());
    return 0;
  }
  google::protobuf::Struct object;
  for (const auto& [key, value] : fields) {
    google::protobuf::Value& v = (*object.mutable_fields())[key];
    if (const auto* s = std::get_if<std::string>(&value)) v.set_string_value(*s);
    if (const auto* d = std::get_if<double>(&value)) v.set_number_value(*d);
    if (const auto* b = std::get_if<bool>(&value)) v.set_bool_value(*b);
  }
  std::fprintf(out, "%s\n", ToJson(object).c_str());
  return 0;
}

absl::StatusOr<std::unique_ptr<Client>> Connect() {
  // Empty: $GSTAB_SOCKET, else the default socket (Client::Connect).
  return Client::Connect(absl::GetFlag(FLAGS_socket),
                         absl::Seconds(std::min(3, absl::GetFlag(FLAGS_timeout_s))));
}

namespace {

// The observer session open now, for the signal thread: its stub (gRPC stubs may be called from
// any thread) and its id; and whether an attach is in flight (its session is not known yet).
absl::Mutex session_mu;
v1::Stabilizer::Stub* session_stub ABSL_GUARDED_BY(session_mu) = nullptr;
std::string session_id ABSL_GUARDED_BY(session_mu);
bool attaching ABSL_GUARDED_BY(session_mu) = false;

void WatchSession(Client* client) {
  absl::MutexLock lock(&session_mu);
  session_stub = client != nullptr ? client->stub() : nullptr;
  session_id = client != nullptr ? client->session() : "";
  attaching = false;
}

// How long a signal waits for an attach in flight to answer, so that it can detach the session
// gstabd made. A frozen gstabd's attach is given up on: its session then lasts to its lease.
constexpr absl::Duration kAttachWait = absl::Seconds(3);

}  // namespace

void HandleStopSignals() {
  signal(SIGPIPE, SIG_IGN);
  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction was = {};
    // A blocked signal is queued even when ignored: one the caller ignores stays out of the set.
    if (sigaction(sig, nullptr, &was) == 0 && was.sa_handler == SIG_IGN) continue;
    sigaddset(&signals, sig);
  }
  if (sigisemptyset(&signals)) return;
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before any thread: they all inherit it
  std::thread([signals] {
    int sig = 0;
    if (sigwait(&signals, &sig) != 0) return;
    absl::MutexLock lock(&session_mu);  // held to the end: the client stays until then
    session_mu.AwaitWithTimeout(absl::Condition(
                                    +[](bool* in_flight) { return !*in_flight; }, &attaching),
                                kAttachWait);
    if (session_stub != nullptr) {
      v1::DetachRequest request;
      request.set_session(session_id);
      v1::DetachResponse response;
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
      (void)session_stub->Detach(&ctx, request, &response);
    }
    RemovePartialFileForGood();
    // Dies of the signal, as without this thread (a shell sees 128 + the signal).
    signal(sig, SIG_DFL);
    pthread_sigmask(SIG_UNBLOCK, &signals, nullptr);
    raise(sig);
  }).detach();
}

void DetachFirst::operator()(Client* client) const {
  (void)client->Detach();
  WatchSession(nullptr);  // after: a signal during the detach detaches too (the second is moot)
  delete client;
}

absl::StatusOr<Observer> ConnectToJob() {
  const std::string job = absl::GetFlag(FLAGS_job);
  if (job.empty()) return absl::InvalidArgumentError("this command needs --job=NAME");
  absl::StatusOr<std::unique_ptr<Client>> client = Connect();
  if (!client.ok()) return client.status();
  AttachOptions o;
  o.job = job;
  o.observer = true;
  {
    absl::MutexLock lock(&session_mu);
    attaching = true;
  }
  if (absl::Status s = (*client)->Attach(o); !s.ok()) {
    WatchSession(nullptr);
    return s;
  }
  WatchSession(client->get());
  return Observer(client->release());
}

absl::StatusOr<v1::ListJobsResponse> ListJobs(Client* client, uint32_t history,
                                              bool include_retired) {
  v1::ListJobsRequest request;
  request.set_history(history);
  request.set_include_retired(include_retired);
  return client->ListJobs(request);
}

void OnlyJob(v1::ListJobsResponse* jobs, const std::string& job) {
  auto* listed = jobs->mutable_jobs();
  listed->erase(std::remove_if(listed->begin(), listed->end(),
                               [&](const v1::JobSummary& j) { return j.job() != job; }),
                listed->end());
}

}  // namespace gstab::ctl
