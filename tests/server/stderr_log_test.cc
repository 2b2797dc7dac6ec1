// StderrLog's FATAL path: the line that ends the process is written at once, after every line
// queued before it, and once. (e2e_process_test covers a stderr that nobody reads.)
#include "server/stderr_log.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include "gtest/gtest.h"

namespace gstab {
namespace {

// In a child process whose stderr is a pipe: installs StderrLog, queues `lines` lines, then
// logs a FATAL one. Returns what the child wrote to stderr, and sets *status.
std::string OutputOfAFatalLine(int lines, int* status) {
  int fds[2];
  if (pipe(fds) != 0) return "";
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    google::InitGoogleLogging("stderr_log_test");  // as gstabd's main does
    StderrLog::Install();
    for (int i = 0; i < lines; ++i) LOG(INFO) << "queued line " << i;
    LOG(FATAL) << "the last word";
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
  const std::string out = OutputOfAFatalLine(1000, &status);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT) << status;
  EXPECT_EQ(Count(out, "the last word"), 1u) << out;
  EXPECT_EQ(Count(out, "queued line "), 1000u);
  const size_t last_queued = out.find("queued line 999\n");
  ASSERT_NE(last_queued, std::string::npos) << out;
  EXPECT_GT(out.find("the last word"), last_queued) << out;
  EXPECT_NE(out.find("F20"), std::string::npos) << out;  // glog's format, severity F
}

}  // namespace
}  // namespace gstab
