// StderrLog's FATAL path: the line that ends the process is written at once, after every line
// queued before it, and once; a line longer than a quarter of the queue is cut, not dropped.
// (e2e_process_test covers a stderr that nobody reads.)
#include "server/stderr_log.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace gstab {
namespace {

// Runs `logging` in a child process whose stderr is a pipe, after it installed StderrLog with a
// queue of `queue_bytes`. Returns what the child wrote to stderr, and sets *status.
template <typename Logging>
std::string OutputOf(size_t queue_bytes, Logging logging, int* status) {
  int fds[2];
  if (pipe(fds) != 0) return "";
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    google::InitGoogleLogging("stderr_log_test");  // as gstabd's main does
    StderrLog::Install(queue_bytes);
    logging();
    StderrLog::FlushInstalled(absl::Seconds(10));
    _exit(0);
  }
  close(fds[1]);
  std::string out;
  char chunk[4096];
  for (ssize_t n; (n = read(fds[0], chunk, sizeof chunk)) > 0;) out.append(chunk, n);
  close(fds[0]);
  waitpid(pid, status, 0);
  return out;
}

size_t Count(const std::string& text, const std::string& what) {
  size_t count = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) {
    ++count;
  }
  return count;
}

TEST(StderrLogTest, AFatalLineComesOnceAfterEveryLineQueuedBeforeIt) {
  int status = 0;
  const std::string out = OutputOf(
      StderrLog::kDefaultMaxQueuedBytes,
      [] {
        for (int i = 0; i < 1000; ++i) LOG(INFO) << "queued line " << i;
        LOG(FATAL) << "the last word";
      },
      &status);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT) << status;
  EXPECT_EQ(Count(out, "the last word"), 1u) << out;
  EXPECT_EQ(Count(out, "queued line "), 1000u);
  const size_t last_queued = out.find("queued line 999\n");
  ASSERT_NE(last_queued, std::string::npos) << out;
  EXPECT_GT(out.find("the last word"), last_queued) << out;
  EXPECT_NE(out.find("F20"), std::string::npos) << out;  // glog's format, severity F
}

// With the smallest queue gstabd takes (--log_queue_bytes=4096), a line of 10,000 bytes is
// written cut to a quarter of it, saying how much went, and the lines around it come whole.
TEST(StderrLogTest, ALineLongerThanAQuarterOfTheQueueIsCutNotDropped) {
  int status = 0;
  const std::string out = OutputOf(
      4096,
      [] {
        LOG(INFO) << "before";
        LOG(WARNING) << "long " << std::string(10000, 'x');
        LOG(INFO) << "after";
      },
      &status);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(Count(out, "dropped"), 0u) << out;
  const size_t long_line = out.find("long xxx");
  ASSERT_NE(long_line, std::string::npos) << out;
  const size_t end = out.find('\n', long_line);
  ASSERT_NE(end, std::string::npos);
  const std::string line = out.substr(long_line, end - long_line);
  EXPECT_NE(line.find(" more bytes cut]"), std::string::npos) << line;
  EXPECT_LT(out.find("before"), long_line) << out;
  EXPECT_GT(out.find("after"), end) << out;
  // The whole written line, with glog's prefix, within a quarter of the queue.
  const size_t begin = out.rfind('\n', long_line) + 1;
  EXPECT_LE(end + 1 - begin, 1024u) << line.size();
}

// A FATAL line while nobody reads stderr (a stalled journald, a full pipe): the process still
// ends (aborted, to be restarted) within seconds, rather than wait on the write for good with
// every other thread's log line (and its stop) behind it.
TEST(StderrLogTest, AFatalLineWhileNobodyReadsStderrStillEndsTheProcess) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  // Full before the child starts: a blocking write to it waits until someone reads.
  const int flags = fcntl(fds[1], F_GETFL);
  ASSERT_EQ(fcntl(fds[1], F_SETFL, flags | O_NONBLOCK), 0);
  const std::string fill(4096, 'f');
  while (write(fds[1], fill.data(), fill.size()) > 0) {
  }
  ASSERT_EQ(fcntl(fds[1], F_SETFL, flags), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    google::InitGoogleLogging("stderr_log_test");
    StderrLog::Install(StderrLog::kDefaultMaxQueuedBytes);
    LOG(FATAL) << "nobody reads this";
    _exit(0);
  }
  close(fds[1]);
  int status = 0;
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (waitpid(pid, &status, WNOHANG) == 0 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  if (absl::Now() >= give_up) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    ADD_FAILURE() << "the process still waited on stderr 20 s after its FATAL line";
  } else {
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT) << status;
  }
  close(fds[0]);
}

}  // namespace
}  // namespace gstab
