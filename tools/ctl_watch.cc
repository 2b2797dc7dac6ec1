// gstabctl events and top: see ctl_watch.h.
#include "tools/ctl_watch.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client_lib/client.h"
#include "client_lib/transport.h"
#include "tools/ctl_common.h"
#include "tools/ctl_format.h"

// Defined with gstabctl's other flags, in gstabctl.cc.
ABSL_DECLARE_FLAG(bool, follow);
ABSL_DECLARE_FLAG(uint32_t, recent);
ABSL_DECLARE_FLAG(int, interval_ms);
ABSL_DECLARE_FLAG(int, iterations);

namespace gstab::ctl {
namespace {

// Whether gstabd holds `job` or keeps it as a checkpoint.
absl::StatusOr<bool> Knows(Client* client, const std::string& job) {
  absl::StatusOr<v1::ListJobsResponse> jobs = ListJobs(client, 0, /*retired=*/true);
  if (!jobs.ok()) return jobs.status();
  OnlyJob(&*jobs, job);
  return !jobs->jobs().empty();
}

}  // namespace

int Events() {
  auto client = Connect();
  if (!client.ok()) return Fail(client.status());
  v1::WatchEventsRequest request;
  request.set_job(absl::GetFlag(FLAGS_job));
  request.set_follow(absl::GetFlag(FLAGS_follow));
  request.set_recent(absl::GetFlag(FLAGS_recent));
  if (request.follow() && !request.job().empty()) {
    // Followed, a job not there yet is waited for (a watcher started before its job), and said
    // so: a misspelt name would otherwise wait in silence.
    absl::StatusOr<bool> known = Knows(client->get(), request.job());
    if (!known.ok()) return Fail(known.status());
    if (!*known) {
      std::fprintf(stderr,
                   "gstabctl: gstabd holds no job '%s' and no checkpoint of it yet: waiting for "
                   "its events (check the name)\n",
                   request.job().c_str());
    }
  }
  // Which gstabd serves the stream: one still serving when a followed stream ends ended it
  // itself (its reader took no event for --event_write_timeout_s).
  std::optional<std::string> serving;
  if (request.follow()) {
    if (absl::StatusOr<v1::IdentifyResponse> id = (*client)->Identify(); id.ok()) {
      serving = id->instance();
    }
  }
  grpc::ClientContext ctx;
  auto reader = (*client)->stub()->WatchEvents(&ctx, request);
  // Not followed: each event is waited for --timeout_s at most, and none while it is written
  // (a slow reader of the output, `| less`, holds the stream, not a deadline over all of it).
  const absl::Duration timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout_s));
  std::atomic<int64_t> reading_since{0};  // unix nanoseconds; 0 while not in a Read
  // Followed: ends when stdout's reader goes (`| head -1`, `| grep -m1`) even while no event
  // comes, rather than hold one of the caller's event streams until the next one.
  std::atomic<bool> streaming{true}, reader_gone{false}, timed_out{false};
  std::thread watch([&] {
    while (streaming.load()) {
      if (request.follow()) {
        if (!StdoutReaderGone(200)) continue;
        reader_gone = true;
        ctx.TryCancel();
        return;
      }
      absl::SleepFor(absl::Milliseconds(50));
      const int64_t since = reading_since.load();
      if (since != 0 && absl::Now() - absl::FromUnixNanos(since) > timeout) {
        timed_out = true;
        ctx.TryCancel();
        return;
      }
    }
  });
  v1::Event event;
  bool written = true, printed = false;
  for (;;) {
    reading_since = absl::ToUnixNanos(absl::Now());
    if (!reader->Read(&event)) break;
    reading_since = 0;
    std::printf("%s\n", absl::GetFlag(FLAGS_json) ? Json(event).c_str() : EventLine(event).c_str());
    written = StdoutWritten();
    printed = true;
    if (!written) break;
  }
  reading_since = 0;
  if (!written) ctx.TryCancel();
  absl::Status s = FromGrpcStatus(reader->Finish());
  streaming = false;
  watch.join();
  if (reader_gone) return 128 + SIGPIPE;  // as if the next write had met the closed pipe
  if (timed_out) {
    return Fail(absl::DeadlineExceededError(
        absl::StrCat("gstabd sent no event for ", absl::FormatDuration(timeout),
                     " (--timeout_s), and had not ended the stream: stopped, or stuck?")));
  }
  if (!written) return StdoutFailed();
  // A followed stream ends when gstabd goes (it ends the stream as it stops, or its connection
  // closes under it: connected before the call, so it was there), or when gstabd ends it for a
  // reader that took no event (cancelled, and a unix-socket connection shut down).
  if (serving.has_value() && (absl::IsUnavailable(s) || absl::IsCancelled(s))) {
    const absl::StatusOr<v1::IdentifyResponse> now = (*client)->Identify();
    if (now.ok() && now->instance() == *serving) {
      return Fail(absl::UnavailableError(absl::StrCat(
          "the event stream ended (", s.message(),
          ") while gstabd serves: it ends a stream whose reader takes no event for "
          "--event_write_timeout_s (gstabctl suspended, or its output not read), or the "
          "connection dropped; run it again")));
    }
  }
  if (request.follow() && (s.ok() || absl::IsUnavailable(s) || absl::IsCancelled(s))) {
    return Fail(absl::UnavailableError(
        s.ok() ? "the event stream ended: gstabd stopped"
               : absl::StrCat("the event stream ended: gstabd stopped, or stopped answering (",
                              s.message(), ")")));
  }
  if (!s.ok()) return Fail(s);
  if (!printed && !request.job().empty() && !request.follow()) {  // as status and top do
    absl::StatusOr<bool> known = Knows(client->get(), request.job());
    if (!known.ok()) return Fail(known.status());
    if (!*known) {
      return Fail(absl::NotFoundError(
          absl::StrCat("gstabd holds no job '", request.job(), "' and no checkpoint of it")));
    }
  }
  return 0;
}

int Top() {
  const int iterations = absl::GetFlag(FLAGS_iterations);
  if (absl::GetFlag(FLAGS_interval_ms) <= 0 || iterations < 0) {
    return Usage("top needs --interval_ms > 0 and --iterations >= 0");
  }
  // Open-ended, it waits for a gstabd not there yet too (a view opened during a rollout), but
  // not for what would never pass (a malformed address, TLS files missing).
  absl::StatusOr<std::unique_ptr<Client>> client = Connect();
  if (!client.ok() && (iterations != 0 || !absl::IsUnavailable(client.status()))) {
    return Fail(client.status());
  }
  const std::string job = absl::GetFlag(FLAGS_job);
  bool job_seen = false;
  // Open-ended, a job gstabd neither holds nor keeps is waited for, and said so under each frame
  // until it comes (on stderr once, with --json), and again once it has gone (forgotten): a
  // misspelt name would otherwise show an empty view for good, as `events --follow` says too.
  std::optional<bool> known;
  constexpr int kAskEvery = 10;
  int frames_without = 0;  // frames in a row without the job
  bool said = false;
  std::optional<absl::Time> down_since;  // while gstabd does not answer
  std::string down_why;                  // why, as last said
  for (int i = 0; iterations == 0 || i < iterations; ++i) {
    if (i > 0) absl::SleepFor(absl::Milliseconds(absl::GetFlag(FLAGS_interval_ms)));
    if (!client.ok()) client = Connect();  // after a failed frame
    absl::StatusOr<v1::ListJobsResponse> jobs =
        client.ok() ? ListJobs(client->get(), 60) : client.status();
    if (!jobs.ok()) {
      // Until interrupted: a gstabd that restarts (a rollout) is waited for, not the view's end,
      // said on stderr once (and again when the reason changes). A terminal shows the wait in
      // place of the last frame, which would otherwise stand there as if current. What waiting
      // would not mend (the socket's group changed: PERMISSION_DENIED; a certificate gstabd
      // refuses) ends the view.
      const absl::Status& failed = jobs.status();
      if (iterations != 0 || absl::IsPermissionDenied(failed) || absl::IsUnauthenticated(failed) ||
          absl::IsInvalidArgument(failed) || absl::IsFailedPrecondition(failed)) {
        return Fail(failed);
      }
      const std::string why(jobs.status().message());
      if (!down_since.has_value() || why != down_why) {
        if (!down_since.has_value()) down_since = absl::Now();
        down_why = why;
        std::fprintf(stderr, "gstabctl: %s (trying again)\n", why.c_str());
      }
      if (!absl::GetFlag(FLAGS_json) && isatty(1)) {
        std::printf("\x1b[2J\x1b[Hgstabd has not answered since %s: %s\nwaiting for it\n",
                    absl::FormatTime("%H:%M:%S", *down_since, absl::LocalTimeZone()).c_str(),
                    why.c_str());
        if (!StdoutWritten()) return StdoutFailed();
      }
      client = jobs.status();  // connects anew at the next frame
      continue;
    }
    if (down_since.has_value()) {
      std::fprintf(stderr, "gstabctl: gstabd answers again\n");
      down_since.reset();
    }
    bool shown = false;
    if (!job.empty()) {
      OnlyJob(&*jobs, job);
      shown = !jobs->jobs().empty();
      job_seen |= shown;
    }
    std::string waiting;
    // While frames lack the job (not there yet, or forgotten since), whether gstabd keeps a
    // checkpoint of it: asked at the first such frame, and again every kAskEvery frames (a
    // second listing, of every checkpoint too).
    if (iterations == 0 && !job.empty() && !shown) {
      if (frames_without % kAskEvery == 0) {
        if (absl::StatusOr<bool> k = Knows(client->get(), job); k.ok()) known = *k;
      }
      ++frames_without;
    } else {
      frames_without = 0;
    }
    if (known == false && !shown) {
      waiting = job_seen ? absl::StrCat("gstabd no longer holds job '", job,
                                        "' nor a checkpoint of it: waiting for it")
                         : absl::StrCat("gstabd holds no job '", job,
                                        "' and no checkpoint of it yet: waiting for it (check "
                                        "the name)");
    }
    if (absl::GetFlag(FLAGS_json)) {
      std::printf("%s\n", Json(*jobs).c_str());
      if (!waiting.empty() && !said) std::fprintf(stderr, "gstabctl: %s\n", waiting.c_str());
      said = !waiting.empty();  // said again once the job has come and gone
    } else {
      std::printf("%s%s%s", isatty(1) ? "\x1b[2J\x1b[H" : "", TopScreen(*jobs, 60).c_str(),
                  waiting.empty() ? "" : absl::StrCat(waiting, "\n").c_str());
    }
    if (!StdoutWritten()) return StdoutFailed();
  }
  // A view of a set number of frames (a script's) that never showed its job failed, as `status`
  // does; an open-ended one waits for the job.
  if (!job.empty() && !job_seen) {
    return Fail(absl::NotFoundError(
        absl::StrCat("gstabd held no job '", job, "' in any of the ", iterations, " frames")));
  }
  return 0;
}

}  // namespace gstab::ctl
