#include "tests/testing/subprocess.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

extern char** environ;

namespace gstab::testing {

absl::StatusOr<Subprocess> Subprocess::Start(const std::vector<std::string>& argv,
                                             const std::string& log_path) {
  int fds[2] = {-1, -1};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (log_path.empty()) {
    if (pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
  } else {
    posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
  }
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  // The child starts as a service manager would start it: no signal blocked or ignored, whatever
  // this process (or the test runner above it) blocks or ignores. An ignored SIGPIPE would
  // otherwise carry over into gstabd and hide its own handling.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  Subprocess p;
  const int err = posix_spawn(&p.pid_, args[0], &actions, &attr, args.data(), environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  if (fds[1] >= 0) close(fds[1]);
  if (err != 0) {
    if (fds[0] >= 0) close(fds[0]);
    return absl::InternalError(absl::StrCat("cannot start ", argv[0], ": ", strerror(err)));
  }
  p.out_fd_ = fds[0];
  return p;
}

Subprocess::Subprocess(Subprocess&& o) noexcept { *this = std::move(o); }

Subprocess& Subprocess::operator=(Subprocess&& o) noexcept {
  std::swap(pid_, o.pid_);
  std::swap(out_fd_, o.out_fd_);
  std::swap(buffer_, o.buffer_);
  return *this;
}

Subprocess::~Subprocess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (out_fd_ >= 0) close(out_fd_);
}

absl::StatusOr<std::string> Subprocess::ReadLine(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    const size_t nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return line;
    }
    if (out_fd_ < 0) return absl::OutOfRangeError("end of output");
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return absl::DeadlineExceededError("no line in time");
    pollfd pfd{out_fd_, POLLIN, 0};
    if (poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1) <= 0) continue;
    char chunk[4096];
    const ssize_t n = read(out_fd_, chunk, sizeof chunk);
    if (n <= 0) {
      close(out_fd_);
      out_fd_ = -1;
      if (!buffer_.empty()) buffer_ += '\n';
      continue;
    }
    buffer_.append(chunk, static_cast<size_t>(n));
  }
}

std::string Subprocess::ReadAll() {
  std::string all;
  for (;;) {
    absl::StatusOr<std::string> line = ReadLine(absl::Seconds(120));
    if (!line.ok()) return all;
    absl::StrAppend(&all, *line, "\n");
  }
}

void Subprocess::Signal(int sig) {
  if (pid_ > 0) kill(pid_, sig);
}

bool Subprocess::Stop(absl::Duration timeout) {
  if (pid_ <= 0 || kill(pid_, SIGSTOP) != 0) return false;
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG | WUNTRACED);
    if (r == pid_ && WIFSTOPPED(status)) return true;
    if (r == pid_ || r < 0 || absl::Now() > deadline) return false;  // exited, or still running
    absl::SleepFor(absl::Milliseconds(1));
  }
}

absl::StatusOr<int> Subprocess::Wait(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (pid_ > 0) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (absl::Now() > deadline) return absl::DeadlineExceededError("process did not exit");
    absl::SleepFor(absl::Milliseconds(10));
  }
  return absl::FailedPreconditionError("not running");
}

absl::StatusOr<DaemonProcess> DaemonProcess::Start(const std::string& dir,
                                                   const std::vector<std::string>& flags,
                                                   const std::vector<std::string>& prefix) {
  const std::string socket = dir + "/gstabd.sock";
  std::vector<std::string> argv = prefix;
  std::vector<std::string> daemon = {GstabdPath(), "--socket=" + socket,
                                     "--state_dir=" + dir + "/state", "--backend=cpu",
                                     "--metrics_port=-1"};
  argv.insert(argv.end(), daemon.begin(), daemon.end());
  argv.insert(argv.end(), flags.begin(), flags.end());
  absl::StatusOr<Subprocess> p = Subprocess::Start(argv, dir + "/gstabd.log");
  if (!p.ok()) return p.status();
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  struct stat st;
  // Its mode made too: bind makes the socket with the umask's mode, and gstabd makes it 0660
  // just after (a test that looked in between saw 0755).
  while (stat(socket.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode) || (st.st_mode & 0777) != 0660) {
    if (absl::Now() > deadline) return absl::DeadlineExceededError("gstabd did not start");
    absl::SleepFor(absl::Milliseconds(20));
  }
  return DaemonProcess(*std::move(p), socket, dir + "/gstabd.log");
}

std::string DaemonProcess::Log() const {
  std::ifstream in(log_);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

bool DaemonProcess::WaitForLog(const std::string& text, absl::Duration timeout) const {
  for (const absl::Time deadline = absl::Now() + timeout;;) {
    if (Log().find(text) != std::string::npos) return true;
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

absl::StatusOr<int> DaemonProcess::MetricsPort() const {
  // gstabd's log lines go out on a thread of their own: the line may follow the socket.
  const std::string marker = "metrics on http://0.0.0.0:";
  for (const absl::Time deadline = absl::Now() + absl::Seconds(5);;) {
    std::ifstream in(log_);
    for (std::string line; std::getline(in, line);) {
      const size_t at = line.find(marker);
      if (at != std::string::npos) return std::atoi(line.c_str() + at + marker.size());
    }
    if (absl::Now() > deadline) return absl::NotFoundError("gstabd logged no metrics port");
    absl::SleepFor(absl::Milliseconds(20));
  }
}

absl::StatusOr<HttpResponse> HttpRequest(int port, const std::string& method,
                                         const std::string& target) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to port ", port));
  }
  const std::string request =
      absl::StrCat(method, " ", target, " HTTP/1.0\r\nHost: localhost\r\n\r\n");
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::InternalError("short write");
  }
  std::string raw;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) raw.append(buf, static_cast<size_t>(n));
  close(fd);
  HttpResponse r;
  const size_t split = raw.find("\r\n\r\n");
  if (raw.size() < 12 || split == std::string::npos) return absl::InternalError("bad response");
  r.status = std::atoi(raw.c_str() + 9);
  r.headers = raw.substr(0, split);
  r.body = raw.substr(split + 4);
  return r;
}

double MetricValue(int port, const std::string& series) {
  absl::StatusOr<HttpResponse> r = HttpRequest(port, "GET", "/metrics");
  const std::string line = "\n" + series + " ";
  const size_t at = r.ok() ? r->body.find(line) : std::string::npos;
  return at == std::string::npos ? -1.0 : std::stod(r->body.substr(at + line.size()));
}

int FreeTcpPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

bool Ipv6LoopbackWorks() {
  const int fd = socket(AF_INET6, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in6 addr{};
  addr.sin6_family = AF_INET6;
  addr.sin6_addr = in6addr_loopback;
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  close(fd);
  return ok;
}

std::pair<int, std::string> RunShell(const std::string& command) {
  // Bounded: a gstabd that starts where the test expects a refusal (a regression) would keep
  // the pipe open for good. timeout kills the command's whole process group.
  std::string quoted = "'";
  for (char c : command) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  quoted += "'";
  std::string out;
  FILE* p = popen(("timeout -k 5 120 sh -c " + quoted + " 2>&1").c_str(), "r");
  if (p == nullptr) return {-1, "popen failed"};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::pair<int, std::string> RunBounded(const std::vector<std::string>& argv) {
  std::vector<std::string> bounded = {"/usr/bin/timeout", "-k", "5", "30"};
  bounded.insert(bounded.end(), argv.begin(), argv.end());
  absl::StatusOr<Subprocess> p = Subprocess::Start(bounded);
  if (!p.ok()) return {-1, std::string(p.status().message())};
  const std::string out = p->ReadAll();
  return {p->Wait(absl::Seconds(20)).value_or(-1), out};
}

absl::StatusOr<int> DaemonProcess::Stop() {
  process_.Signal(SIGTERM);
  return process_.Wait(absl::Seconds(30));
}

TempDir::TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "gstab-test.XXXXXX").string();
  path_ = mkdtemp(pattern.data());
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string GstabdPath() { return BinaryPath("server/gstabd"); }

std::string BinaryPath(const std::string& relative) {
  // Bundled runs (scripts/gpu-check) keep every binary in one folder.
  if (const char* dir = std::getenv("GSTAB_BIN_DIR"); dir != nullptr && *dir != 0) {
    return std::string(dir) + "/" + std::filesystem::path(relative).filename().string();
  }
  return std::string(GSTAB_BUILD_DIR) + "/" + relative;
}

pid_t TracedChild(pid_t tracer) {
  std::ifstream children(absl::StrCat("/proc/", tracer, "/task/", tracer, "/children"));
  pid_t child = 0;
  return children >> child ? child : 0;
}

}  // namespace gstab::testing
