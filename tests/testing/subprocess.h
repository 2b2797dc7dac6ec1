// Test and benchmark helpers that run real gstab processes: a child process with its output
// captured, and a gstabd in its own temporary folder. Not thread-safe.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace gstab::testing {

class Subprocess {
 public:
  // Starts argv[0] (a path) with stdout and stderr on a pipe (or into `log_path` when given).
  static absl::StatusOr<Subprocess> Start(const std::vector<std::string>& argv,
                                          const std::string& log_path = "");
  Subprocess(Subprocess&& other) noexcept;
  Subprocess& operator=(Subprocess&& other) noexcept;
  ~Subprocess();  // SIGKILLs a child still running

  pid_t pid() const { return pid_; }
  // Next line of output, or DEADLINE_EXCEEDED / OUT_OF_RANGE (end of output).
  absl::StatusOr<std::string> ReadLine(absl::Duration timeout);
  // Everything the child writes until it exits.
  std::string ReadAll();
  void Signal(int sig);
  // SIGSTOP, then waits until the process has stopped (false if it had not within `timeout`).
  // A stop is not at once: the thread the signal reaches stops the others, which run on until
  // then (tens of milliseconds on a busy machine, long enough to answer a call).
  bool Stop(absl::Duration timeout = absl::Seconds(10));
  // Waits for exit; returns the exit code, or 128 + signal.
  absl::StatusOr<int> Wait(absl::Duration timeout);

 private:
  Subprocess() = default;
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::string buffer_;
};

// gstabd started on <dir>/gstabd.sock with state in <dir>/state; extra flags appended.
class DaemonProcess {
 public:
  // `prefix` runs gstabd through another command (for example `ip netns exec NS`).
  static absl::StatusOr<DaemonProcess> Start(const std::string& dir,
                                             const std::vector<std::string>& flags = {},
                                             const std::vector<std::string>& prefix = {});
  const std::string& socket() const { return socket_; }
  Subprocess& process() { return process_; }
  // The /metrics port the daemon logged (start it with --metrics_port=0).
  absl::StatusOr<int> MetricsPort() const;
  // SIGTERM and wait: the exit code.
  absl::StatusOr<int> Stop();
  // What the daemon has logged so far.
  std::string Log() const;
  // Whether the daemon logs `text` within `timeout` (its lines go out on a thread of their own,
  // a moment after what they tell of).
  bool WaitForLog(const std::string& text, absl::Duration timeout = absl::Seconds(5)) const;

 private:
  DaemonProcess(Subprocess p, std::string socket, std::string log)
      : process_(std::move(p)), socket_(std::move(socket)), log_(std::move(log)) {}
  Subprocess process_;
  std::string socket_;
  std::string log_;
};

struct HttpResponse {
  int status = 0;
  std::string headers;
  std::string body;
};
// A plain HTTP/1.0 request to 127.0.0.1:port.
absl::StatusOr<HttpResponse> HttpRequest(int port, const std::string& method,
                                         const std::string& target);
// The value of one series (its name and labels as exposed: `gstab_build_info{version="1"}`) on
// the /metrics page of 127.0.0.1:port; -1 when the page or the series cannot be read.
double MetricValue(int port, const std::string& series);
// A TCP port nobody listens on right now.
int FreeTcpPort();
// Whether this machine has the IPv6 loopback address (containers may have IPv6 off).
bool Ipv6LoopbackWorks();
// Runs a shell command, for 120 s at most (exit code 124 after); returns its exit code and
// combined output.
std::pair<int, std::string> RunShell(const std::string& command);

// The process that strace (pid `tracer`, run as `strace ... PROGRAM ARGS`) traces: its first
// child, or 0 when it has none (yet).
pid_t TracedChild(pid_t tracer);
// Runs argv (argv[0] a path; a gstabd expected to refuse to start, say) for 30 s at most, should
// it run on after all; returns its exit code (-1 when it could not start or did not end) and
// combined output.
std::pair<int, std::string> RunBounded(const std::vector<std::string>& argv);

// A fresh temporary directory, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Paths of the binaries under test: the build directory CMake set, or $GSTAB_BIN_DIR.
std::string GstabdPath();
std::string BinaryPath(const std::string& relative);  // relative to the build directory

}  // namespace gstab::testing
