// gstabd: the gstab daemon. Flags are read once into ServerOptions; SIGTERM / SIGINT are
// taken synchronously by the main thread (sigwait), which then stops the server gracefully.
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/command_line.h"
#include "glog/logging.h"
#include "server/gstabd_flags.h"
#include "server/nccl_settings.h"
#include "server/server.h"
#include "server/shm_faults.h"
#include "server/stderr_log.h"
#include "server/stop_limit.h"
#ifdef GSTAB_WITH_CUDA
#include "kernels/cuda/cuda_check.h"
#include "server/cuda/cuda_ipc.h"
#endif

namespace {

// The signals gstabd takes in AwaitStopSignal: the stop signals; SIGHUP, SIGUSR1 and SIGUSR2,
// which would otherwise end it without a checkpoint (a closed terminal, a habitual reload);
// and SIGCHLD as a container's process 1, which inherits the orphans of `kubectl exec` shells.
sigset_t HandledSignals() {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2}) sigaddset(&set, sig);
  if (getpid() == 1) sigaddset(&set, SIGCHLD);
  return set;
}

// Waits for SIGTERM or SIGINT, and returns it; logs and ignores the others of `signals`, and
// reaps the children that end meanwhile. `others_only`: a stop signal gstabd sent itself (a
// lost CUDA context's, StopOnStickyCudaError) is ignored too, logged.
int AwaitStopSignal(const sigset_t& signals, bool others_only = false) {
  for (;;) {
    siginfo_t info;
    const int sig = sigwaitinfo(&signals, &info);
    if (sig < 0) continue;
    if ((sig == SIGTERM || sig == SIGINT) && others_only && info.si_code == SI_USER &&
        info.si_pid == getpid()) {
      LOG(WARNING) << "gstabd's own " << strsignal(sig)
                   << " while stopping (its CUDA context lost): the stop goes on";
      continue;
    }
    if (sig == SIGTERM || sig == SIGINT) return sig;
    if (sig == SIGCHLD) {
      while (waitpid(-1, nullptr, WNOHANG) > 0) {
      }
      continue;
    }
    LOG(WARNING) << "ignored " << strsignal(sig)
                 << ": gstabd reloads nothing at a signal (it reads its TLS files again every "
                    "--tls_reload_s); SIGTERM or SIGINT stops it";
  }
}

// A SIGTERM this soon after the first is a supervisor's repeat (`docker stop` run twice, a
// runtime sending it again as the grace period is cut), not an operator's: the stop goes on.
constexpr absl::Duration kRepeatedStopSignal = absl::Seconds(2);

// After the stop signal: a second SIGTERM or SIGINT (an operator's second Ctrl-C) ends gstabd at
// once, without the rest of its stop, exiting `code()` (the stop's own cause's, else 1); a
// SIGTERM within kRepeatedStopSignal of the first does not. The other signals are taken as
// before.
void ExitAtASecondStopSignal(const sigset_t& signals, int (*code)()) {
  const absl::Time first = absl::Now();
  std::thread([signals, code, first] {
    int sig = AwaitStopSignal(signals, /*others_only=*/true);
    while (sig == SIGTERM && absl::Now() - first < kRepeatedStopSignal) {
      LOG(WARNING) << "received " << strsignal(sig) << " again within "
                   << absl::FormatDuration(kRepeatedStopSignal)
                   << " of the first (a supervisor repeating it): the stop goes on; SIGINT, or "
                      "SIGTERM later, ends gstabd at once";
      sig = AwaitStopSignal(signals, /*others_only=*/true);
    }
    LOG(WARNING) << "received " << strsignal(sig)
                 << " again while stopping: gstabd exits now, without finishing its stop (the "
                    "statistics of its last checkpoint stand)";
    gstab::StderrLog::FlushInstalled(absl::Seconds(1));  // _exit runs no destructor
    const int exit_code = code();
    _exit(exit_code != 0 ? exit_code : 1);
  }).detach();
}

// A stop signal that came while gstabd started (before it serves): taken, and returned.
std::optional<int> PendingStopSignal(const sigset_t& signals) {
  sigset_t pending;
  if (sigpending(&pending) != 0) return std::nullopt;
  for (int sig : {SIGTERM, SIGINT}) {
    if (sigismember(&pending, sig) == 1 && sigismember(&signals, sig) == 1) {
      sigset_t one;
      sigemptyset(&one);
      sigaddset(&one, sig);
      int taken = 0;
      (void)sigwait(&one, &taken);
      return sig;
    }
  }
  return std::nullopt;
}

#ifdef GSTAB_WITH_CUDA
// Set at the first CUDA error that loses gstabd's context for good: gstabd then stops, as at
// SIGTERM, and exits 70, to be restarted. Serving on, every GPU job's steps would fail, and
// workers waiting for steps it held would wait for good (their client libraries release them
// once gstabd is gone).
std::atomic<bool> cuda_context_lost{false};
constexpr int kCudaContextLostExit = 70;
void StopOnStickyCudaError(cudaError_t err, const char* expr) {
  if (cuda_context_lost.exchange(true)) return;
  LOG(ERROR) << "gstabd's CUDA context is lost (" << cudaGetErrorName(err) << ": "
             << cudaGetErrorString(err) << ", at " << expr
             << "): every later CUDA call fails alike; gstabd stops, to be restarted";
  kill(getpid(), SIGTERM);
}
#endif

}  // namespace

int main(int argc, char** argv) {
  gstab::OpenStandardDescriptors();  // a closed stderr's number is not the log's next file's
  // Before any thread starts (CUDA's driver starts some below): every thread inherits the
  // block, and only the loop at the end of main takes these signals.
  const sigset_t signals = HandledSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // A reader of gstabd's log or a client that goes away must not end it (civetweb would ignore
  // SIGPIPE too, but only with the metrics port on).
  signal(SIGPIPE, SIG_IGN);
  // --help lists gstabd's flags (gstabd_flags.cc); --helpfull abseil's as well.
  if (const std::vector<char*> rest = gstab::ParseCommandLineOrExit(
          argc, argv, "gstabd",
          "[--flag=VALUE ...]: the gstab gradient-stabilizer daemon (--helpfull: every flag)",
          gstab::kGstabdFlagsFile);
      rest.size() > 1) {
    std::fprintf(stderr,
                 "gstabd: unexpected argument '%s': flags take their values as --flag=value (a "
                 "boolean as --flag or --flag=false)\n",
                 rest[1]);
    return 2;
  }
  const std::optional<size_t> log_queue_bytes = gstab::LogQueueBytesFromFlag();
  if (!log_queue_bytes.has_value()) return 2;
  google::InitGoogleLogging(argv[0]);
  // Log lines go to stderr through a thread of their own: a reader that stops reading stderr
  // holds up that thread, not gstabd. At the end, what is queued gets a moment to go out.
  gstab::StderrLog* log = gstab::StderrLog::Install(*log_queue_bytes);
  absl::Cleanup flush_log = [log] { log->Flush(absl::Seconds(2)); };

  const std::optional<std::string> backend_flag = gstab::BackendFromFlag();
  if (!backend_flag.has_value()) return 2;
  const std::string& backend = *backend_flag;
  // Before CUDA starts: a bad command line does not wait for it.
  std::optional<gstab::ServerOptions> flags = gstab::OptionsFromFlags();
  if (!flags.has_value()) return 2;
  gstab::ServerOptions& options = *flags;
#ifdef GSTAB_WITH_CUDA
  // Before CUDA starts: load every kernel (ours and NCCL's) when the device context is made.
  // Loaded lazily, a kernel's first launch may wait for all work on the device, including a
  // step of another job held at its worker's ready word (CudaStepper preloads its own kernels
  // too; this covers what else gstabd links).
  gstab::RequireEnvironment("CUDA_MODULE_LOADING", "EAGER", "needs");
  // Each job's stream waits at its worker's ready word for the length of a backward pass, and
  // streams beyond the device's hardware queues share one in order: a job whose stream shares a
  // queue with a waiting one waits too. Ask for the most queues CUDA gives (32, default 8).
  gstab::RequireEnvironment("CUDA_DEVICE_MAX_CONNECTIONS", "32", "uses");
  std::string no_gpu_why;  // CUDA's reason for none, when it has one worth telling
  gstab::sticky_cuda_error_handler = &StopOnStickyCudaError;
  // --backend=cpu does not start CUDA at all: a node whose GPU or driver hangs CUDA's start
  // still gets a gstabd that serves host memory.
  const int gpus = backend == "cpu" ? 0 : gstab::CudaDeviceCount(&no_gpu_why);
#else
  const std::string no_gpu_why;
  const int gpus = 0;
#endif
  if (backend == "cuda" && gpus == 0) {
    std::fprintf(
        stderr,
        "gstabd: --backend=cuda, but no CUDA device is usable here (%s); use "
        "--backend=cpu or auto\n",
        no_gpu_why.empty() ? "no GPU or driver, or a build without CUDA" : no_gpu_why.c_str());
    return 2;
  }
  if (backend == "auto" && !no_gpu_why.empty()) {
    std::fprintf(stderr, "gstabd: CUDA is not usable here (%s): serving the CPU backend\n",
                 no_gpu_why.c_str());
  }

  options.daemon.cuda = backend != "cpu" && gpus > 0;
  gstab::SetGstabdNcclEnvironment();  // before NCCL starts
  gstab::ShmFaults::Install();  // a worker's lost shared memory fails its step, not gstabd
  // gstabd keeps a descriptor per mapped shared-memory object (to see it shrink) and per
  // connection: the usual soft limit of 1024 is too few for many workers' registrations.
  if (rlimit files; getrlimit(RLIMIT_NOFILE, &files) == 0) {
    if (files.rlim_cur < files.rlim_max) {
      rlimit raised = files;
      raised.rlim_cur = files.rlim_max;
      if (setrlimit(RLIMIT_NOFILE, &raised) == 0) files = raised;
    }
    // Room for the mappings' descriptors and a thousand more (connections, logs, libraries).
    const rlim_t wanted = static_cast<rlim_t>(options.daemon.max_mappings) + 1024;
    if (files.rlim_cur != RLIM_INFINITY && files.rlim_cur < wanted) {
      LOG(WARNING) << "the open-file limit (RLIMIT_NOFILE " << files.rlim_cur
                   << ") is below --max_mappings and room for connections (" << wanted
                   << "): registrations may fail with \"Too many open files\" before the cap; "
                      "raise the limit (ulimit -n, the container's nofile) or lower --max_mappings";
    }
  }
  // INVALID_ARGUMENT: flags that do not go together, or name what cannot be used (a PEM file
  // that is none, a socket path too long): a bad command line, as above. Else the machine
  // refused (the state folder, the socket, a port in use).
  auto exit_code = [](const absl::Status& s) { return absl::IsInvalidArgument(s) ? 2 : 1; };
  absl::StatusOr<std::unique_ptr<gstab::Server>> server = gstab::Server::Create(options);
  if (!server.ok()) {
    LOG(ERROR) << server.status();
    return exit_code(server.status());
  }
  // A stop asked for while gstabd started (its checkpoints read, CUDA started): it exits without
  // serving, rather than take workers' attaches for a moment and stop.
  if (const std::optional<int> early = PendingStopSignal(signals)) {
    LOG(INFO) << "received " << strsignal(*early)
              << " while starting: gstabd exits without serving";
#ifdef GSTAB_WITH_CUDA
    if (cuda_context_lost.load()) return kCudaContextLostExit;  // its own: to be restarted
#endif
    return 0;
  }
  if (absl::Status s = (*server)->Start(); !s.ok()) {
    LOG(ERROR) << s;
    return exit_code(s);
  }
  log->Flush(absl::Seconds(1));  // the start's lines (its ports) out soon after the socket
  const int sig = AwaitStopSignal(signals);
  LOG(INFO) << "received " << strsignal(sig);
  // The stop's own cause, if any (also one met while stopping); else 0, or 1 if it fails.
  int (*stop_code)() = [] {
#ifdef GSTAB_WITH_CUDA
    if (cuda_context_lost.load()) return kCudaContextLostExit;
#endif
    return 0;
  };
  ExitAtASecondStopSignal(signals, stop_code);
  const absl::Time stop_began = absl::Now();
  // The drain leaves the stop's checkpoints most of --stop_limit_s.
  absl::Status stopped =
      (*server)->Stop(stop_began + std::min(absl::Seconds(10), options.stop_limit / 3), stop_code);
  if (!stopped.ok()) LOG(ERROR) << stopped;
  const int code = stop_code() != 0 ? stop_code() : stopped.ok() ? 0 : 1;
  {
    // The stop limit covers the teardown after the stop too: a job's GPU pipelines wait for
    // their streams as they close (up to the step timeout each), and the stop's checkpoint is
    // saved by now.
    const gstab::StopLimit teardown(
        std::max(options.stop_limit - (absl::Now() - stop_began), absl::Milliseconds(100)), [code] {
          LOG(ERROR) << "gstabd's teardown after its stop ran past --stop_limit_s (a job's GPU "
                        "stream that does not finish, most likely): gstabd exits without it";
          gstab::StderrLog::FlushInstalled(absl::Seconds(1));  // _exit runs no destructor
          _exit(code);
        });
    server->reset();
  }
  return code;
}
