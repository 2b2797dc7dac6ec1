#include "server/stderr_log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>

#include "absl/strings/str_cat.h"
#include "grpc/support/log.h"

namespace gstab {
namespace {

// Writes all of `text` to stderr, waiting while it is full; gives up when stderr is closed or
// fails (the lines are lost: there is nowhere else to say so), or, stderr non-blocking, at
// `deadline` (false then).
bool WriteToStderr(const std::string& text, absl::Time deadline = absl::InfiniteFuture()) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(STDERR_FILENO, text.data() + done, text.size() - done);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // A non-blocking stderr (someone else's shared terminal, or the FATAL path's own): wait
      // until it takes more.
      const absl::Time now = absl::Now();
      if (now >= deadline) return false;
      pollfd p = {STDERR_FILENO, POLLOUT, 0};
      (void)::poll(&p, 1,
                   deadline == absl::InfiniteFuture()
                       ? -1
                       : static_cast<int>(std::min<int64_t>(
                             absl::ToInt64Milliseconds(deadline - now) + 1, 1000)));
    } else {
      return true;
    }
  }
  return true;
}

// gRPC's log lines, into glog (and so through the writer thread rather than straight to stderr).
void GrpcLine(gpr_log_func_args* args) {
  const google::LogSeverity severity =
      args->severity == GPR_LOG_SEVERITY_ERROR ? google::GLOG_ERROR : google::GLOG_INFO;
  google::LogMessage(args->file, args->line, severity).stream() << "grpc: " << args->message;
}

std::atomic<StderrLog*> g_installed{nullptr};

}  // namespace

StderrLog::StderrLog(size_t max_queued_bytes) : max_queued_bytes_(max_queued_bytes) {}

StderrLog* StderrLog::Install(size_t max_queued_bytes) {
  auto* log = new StderrLog(max_queued_bytes);  // never deleted: see the header
  std::thread([log] { log->Run(); }).detach();
  for (int severity = google::GLOG_INFO; severity < google::NUM_SEVERITIES; ++severity) {
    google::SetLogDestination(severity, "");  // no log files
  }
  FLAGS_logtostderr = false;
  FLAGS_alsologtostderr = false;
  FLAGS_stderrthreshold = google::NUM_SEVERITIES;  // glog itself writes no line to stderr
  google::AddLogSink(log);
  gpr_set_log_function(&GrpcLine);
  g_installed = log;
  return log;
}

void StderrLog::send(google::LogSeverity severity, const char* /*full_filename*/,
                     const char* base_filename, int line, const google::LogMessageTime& time,
                     const char* message, size_t message_len) {
  std::string text = ToString(severity, base_filename, line, time, message, message_len);
  // A line may take a quarter of the queue: a longer one (a message naming many jobs) is cut
  // there, rather than dropped whole however well stderr is read.
  if (const size_t longest = max_queued_bytes_ / 4;
      longest > kCutNoteBytes && text.size() + 1 > longest) {
    size_t cut = longest - kCutNoteBytes;
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;  // UTF-8
    const size_t rest = text.size() - cut;
    text.resize(cut);
    absl::StrAppend(&text, " [", rest, " more bytes cut]");
  }
  text += '\n';
  absl::MutexLock lock(&mu_);
  if (severity >= google::GLOG_FATAL) {
    // The process ends after this line: write it now, after the lines queued before it and
    // after the batch being written (2 s at most: a stderr nobody reads would hold it for good).
    mu_.AwaitWithTimeout(absl::Condition(this, &StderrLog::NotWriting), absl::Seconds(2));
    // Non-blocking meanwhile, so that a stderr nobody reads holds the write 2 s at most. Left so
    // when the write gave up: glog's stack trace, written to it next, would wait for good, and
    // the process never end (to be restarted); it fails at once instead.
    const int flags = fcntl(STDERR_FILENO, F_GETFL);
    if (flags >= 0) (void)fcntl(STDERR_FILENO, F_SETFL, flags | O_NONBLOCK);
    if (WriteToStderr(TakeQueued() + text, absl::Now() + absl::Seconds(2)) && flags >= 0) {
      (void)fcntl(STDERR_FILENO, F_SETFL, flags);
    }
    return;
  }
  if (queue_.size() + text.size() > max_queued_bytes_) {
    ++dropped_;
    return;
  }
  queue_ += text;
}

void StderrLog::Run() {
  for (;;) {
    std::string batch;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      mu_.Await(absl::Condition(this, &StderrLog::Queued));
      batch = TakeQueued();
      writing_ = true;
    }
    WriteToStderr(batch);
  }
}

bool StderrLog::Flush(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(absl::Condition(this, &StderrLog::Idle), timeout);
}

void StderrLog::FlushInstalled(absl::Duration timeout) {
  if (StderrLog* log = g_installed.load(); log != nullptr) log->Flush(timeout);
}

std::string StderrLog::TakeQueued() {
  std::string lines;
  if (dropped_ > 0) {
    lines = absl::StrCat("gstabd: ", dropped_,
                         " log lines dropped: stderr was not read while they were logged\n");
    dropped_ = 0;
  }
  lines += queue_;
  queue_.clear();
  return lines;
}

}  // namespace gstab
