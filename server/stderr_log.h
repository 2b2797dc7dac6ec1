// gstabd's log lines reach stderr through a thread of their own. Written in place, a line
// blocks its caller while stderr's reader does not read (a container runtime or journald that
// stalls, a pipe nobody drains): an attach or a step that logs would hang, and a SIGTERM would
// not be acted on. Here the caller only queues the line; the writer thread waits on stderr.
// While the queue is full, new lines are dropped and counted, and the count is written once
// stderr takes lines again. A FATAL line is written at once, after everything queued before it
// (the process is about to end).
//
// gRPC's own log lines (its errors) are routed through glog, and so through here too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "glog/logging.h"

namespace gstab {

class StderrLog final : public google::LogSink {
 public:
  static constexpr size_t kDefaultMaxQueuedBytes = size_t{1} << 20;

  // From now on glog's lines (and gRPC's) go to stderr through the writer thread; at most
  // `max_queued_bytes` of them wait there. Call once, after google::InitGoogleLogging. The
  // object lives until the process ends: glog may log from any thread until then.
  static StderrLog* Install(size_t max_queued_bytes = kDefaultMaxQueuedBytes);

  // Waits up to `timeout` for the queued lines to be written (before the process exits);
  // false when some are still waiting.
  bool Flush(absl::Duration timeout);
  // Flush of the installed StderrLog, if any: for a process about to end by _exit, which runs
  // no destructor.
  static void FlushInstalled(absl::Duration timeout);

  void send(google::LogSeverity severity, const char* full_filename, const char* base_filename,
            int line, const google::LogMessageTime& time, const char* message,
            size_t message_len) override;

 private:
  explicit StderrLog(size_t max_queued_bytes);
  void Run();
  // The queued lines, after the notice of those dropped since the last (if any); empties both.
  std::string TakeQueued() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The notice of lines dropped is written too, with no line after it.
  bool Queued() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty() || dropped_ > 0; }
  bool NotWriting() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !writing_; }
  bool Idle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !Queued() && NotWriting(); }
  static constexpr size_t kCutNoteBytes = 40;  // room for " [N more bytes cut]" and the newline

  const size_t max_queued_bytes_;
  mutable absl::Mutex mu_;
  std::string queue_ ABSL_GUARDED_BY(mu_);  // whole lines, each ending in '\n'
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;  // lines dropped since the last notice
};

}  // namespace gstab
