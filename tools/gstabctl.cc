// gstabctl: look at and steer a node's gstabd.
//
//   gstabctl health                        exit 0 when gstabd serves (a container probe)
//   gstabctl version                       gstabctl's release, and gstabd's: its release, host,
//                                           instance (which workers share a node) and start
//   gstabctl status [--all] [--job=J]      jobs, workers, policy, last norms, counters
//                                           (--all: and the retired jobs, kept as checkpoints)
//   gstabctl events [--job=J] [--follow]   recent events, or the live stream
//   gstabctl top                           a refreshing view: norm sparklines per job
//   gstabctl config set --job=J policy=clip clip.max_norm=0.5
//   gstabctl config show --job=J           the job's whole configuration, as config set takes it
//   gstabctl export --job=J --out=FILE     the job's statistics, for its own checkpoint (-: stdout)
//   gstabctl import --job=J --in=FILE [--keep_config]  (--keep_config: statistics only)
//   gstabctl forget --job=J                drops what gstabd holds of a job no worker uses
//                                           (statistics, step count, configuration, checkpoint)
//   gstabctl rendezvous --job=J --nodes=N [--cuda]  a new rendezvous blob in base64
//                                           (GSTAB_RENDEZVOUS); --cuda for GPU gradients
//
// Human-readable by default, --json for scripts (every field, defaults included; 64-bit
// integers as strings, as protobuf's JSON mapping has them). Exit status 0 on success, 1 on any
// error (with the reason on stderr), 2 for a bad command line (an unknown command, a missing or
// malformed argument, or a flag absl cannot parse).
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client_lib/client.h"
#include "client_lib/config_text.h"
#include "client_lib/gstab.h"
#include "client_lib/transport.h"
#include "common/command_line.h"
#include "common/environment.h"
#include "common/job_name.h"
#include "common/wire_limits.h"
#include "tools/ctl_common.h"
#include "tools/ctl_files.h"
#include "tools/ctl_format.h"
#include "tools/ctl_watch.h"

ABSL_FLAG(std::string, socket, "",
          "gstabd's unix socket (default: $GSTAB_SOCKET, else /run/gstab/gstabd.sock), or "
          "HOST:PORT of its TCP port (--listen; mutual TLS with the PEM "
          "files GSTAB_TLS_CA, GSTAB_TLS_CERT and GSTAB_TLS_KEY name; GSTAB_TLS_NAME: the name "
          "in gstabd's certificate, when not the host)");
ABSL_FLAG(bool, json, false, "print JSON (one object per line) instead of text");
ABSL_FLAG(std::string, job, "", "the job to act on (status, events, top: filter)");
ABSL_FLAG(bool, follow, false, "events: keep streaming new events");
ABSL_FLAG(uint32_t, recent, 100, "events: how many recent events to show first");
ABSL_FLAG(int, interval_ms, 1000, "top: refresh period");
ABSL_FLAG(int, iterations, 0, "top: refreshes before exiting (0: until interrupted)");
ABSL_FLAG(std::string, out, "", "export: file to write (-: stdout)");
ABSL_FLAG(std::string, in, "", "import: file to read (-: stdin)");
ABSL_FLAG(bool, keep_config, false,
          "import: the job keeps its configuration (only the statistics and step count)");
ABSL_FLAG(uint32_t, nodes, 0, "rendezvous: the job's node count");
ABSL_FLAG(bool, cuda, false, "rendezvous: the job registers GPU gradients (adds an NCCL id)");
ABSL_FLAG(bool, all, false, "status: also the retired jobs, kept as checkpoints");
ABSL_FLAG(
    int, timeout_s, 10,
    "how long to wait for each of gstabd's answers (events: for each event; events --follow: none "
    "once it streams)");

namespace gstab::ctl {
namespace {

// Quiet on success, so a probe's log stays empty; the reason on stderr otherwise.
int Health() {
  auto client = Connect();
  if (!client.ok()) return Fail(client.status());
  if (absl::Status s = (*client)->CheckHealth(absl::Seconds(absl::GetFlag(FLAGS_timeout_s)));
      !s.ok()) {
    return Fail(s);
  }
  if (absl::GetFlag(FLAGS_json)) std::printf("{\"status\":\"SERVING\"}\n");
  return 0;
}

int Version() {
  const bool json = absl::GetFlag(FLAGS_json);
  if (!json) std::printf("gstabctl %s\n", GSTAB_VERSION);  // said even when no gstabd answers
  // With --json, gstabctl's own release alone (exit 1) when gstabd cannot say its own.
  auto failed = [json](const absl::Status& s) {
    if (json) Done("", {{"gstabctl", GSTAB_VERSION}});
    return Fail(s);
  };
  auto client = Connect();
  if (!client.ok()) return failed(client.status());
  absl::StatusOr<v1::IdentifyResponse> daemon = (*client)->Identify();
  if (absl::IsUnimplemented(daemon.status())) {
    return failed(absl::UnimplementedError(
        "gstabd is of an earlier release, which cannot say its release or instance"));
  }
  if (!daemon.ok()) return failed(daemon.status());
  const std::string started = absl::FormatTime(
      absl::RFC3339_sec, absl::FromUnixMillis(daemon->started_unix_ms()), absl::UTCTimeZone());
  return Done(absl::StrCat("gstabd ", daemon->version(), " on ", daemon->host(), ", instance ",
                           daemon->instance(), ", started ", started),
              {{"gstabctl", GSTAB_VERSION},
               {"gstabd", daemon->version()},
               {"host", daemon->host()},
               {"instance", daemon->instance()},
               {"started", started}});
}

int Status() {
  auto client = Connect();
  if (!client.ok()) return Fail(client.status());
  auto jobs = ListJobs(client->get(), 0, absl::GetFlag(FLAGS_all));
  if (!jobs.ok()) return Fail(jobs.status());
  if (const std::string job = absl::GetFlag(FLAGS_job); !job.empty()) {  // that job alone
    OnlyJob(&*jobs, job);
    if (jobs->jobs().empty()) {
      return Fail(absl::NotFoundError(absl::StrCat(
          "gstabd holds no job '", job, "'",
          absl::GetFlag(FLAGS_all) ? ""
                                   : " (--all lists the retired ones too, kept as checkpoints)")));
    }
  }
  std::printf(
      "%s", absl::GetFlag(FLAGS_json) ? (Json(*jobs) + "\n").c_str() : StatusTable(*jobs).c_str());
  return 0;
}

// The job's configuration version, as GetStats gives it (its history's newest).
uint64_t ConfigVersion(const v1::GetStatsResponse& stats) {
  return stats.config_history().empty() ? 1 : stats.config_history().rbegin()->version();
}

int ConfigSet(const std::vector<std::string>& assignments) {
  if (assignments.empty()) return Usage("config set needs KEY=VALUE arguments");
  if (absl::GetFlag(FLAGS_job).empty()) return Usage("config set needs --job=NAME");
  absl::StatusOr<v1::PolicyConfig> update = ParseConfigSettings(absl::StrJoin(assignments, " "));
  if (!update.ok()) return Usage(std::string(update.status().message()));
  auto client = ConnectToJob();
  if (!client.ok()) return Fail(client.status());
  // The job's configuration version before: settings it has already make no new one (and a
  // version that did not move is one nobody changed meanwhile either).
  absl::StatusOr<v1::GetStatsResponse> stats = (*client)->GetStats();
  if (!stats.ok()) return Fail(stats.status());
  const uint64_t before = ConfigVersion(*stats);
  // A multi-GPU job's GPUs take a configuration at the same step: ABORTED while some have
  // enqueued a step and some not yet.
  absl::StatusOr<v1::UpdateConfigResponse> updated;
  (void)TryAgainWhileBusy({absl::StatusCode::kAborted}, [&] {
    updated = (*client)->UpdateConfig(*update);
    return updated.status();
  });
  if (!updated.ok()) return Fail(updated.status());
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", Json(*updated).c_str());
  } else if (updated->version() == before) {
    std::printf("job %s: configuration unchanged (version %llu): it has these settings already\n",
                absl::GetFlag(FLAGS_job).c_str(),
                static_cast<unsigned long long>(updated->version()));
  } else {
    std::printf("job %s: configuration version %llu, effective from the next step\n",
                absl::GetFlag(FLAGS_job).c_str(),
                static_cast<unsigned long long>(updated->version()));
  }
  return 0;
}

// The job's whole configuration as `config set` takes it (every default filled in).
int ConfigShow() {
  if (absl::GetFlag(FLAGS_job).empty()) return Usage("config show needs --job=NAME");
  auto client = ConnectToJob();
  if (!client.ok()) return Fail(client.status());
  auto stats = (*client)->GetStats();
  if (!stats.ok()) return Fail(stats.status());
  const uint64_t version = ConfigVersion(*stats);
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("{\"version\":\"%llu\",\"config\":%s}\n", static_cast<unsigned long long>(version),
                Json(stats->config()).c_str());
  } else {
    std::printf("# job %s, configuration version %llu\n%s\n", absl::GetFlag(FLAGS_job).c_str(),
                static_cast<unsigned long long>(version),
                ConfigSettingsText(stats->config()).c_str());
  }
  return 0;
}

int Export() {
  const std::string path = absl::GetFlag(FLAGS_out);
  if (path.empty() || absl::GetFlag(FLAGS_job).empty()) {
    return Usage("export needs --job=NAME and --out=FILE");
  }
  // Checked before the job is touched: a folder, or a file that cannot be written, costs no
  // session and no export.
  absl::StatusOr<Output> out = ResolveOutput(path);
  if (!out.ok()) return Fail(out.status());
  auto client = ConnectToJob();
  if (!client.ok()) return Fail(client.status());
  auto state = (*client)->ExportState();
  if (!state.ok()) return Fail(state.status());
  // Detached before writing: a reader that never reads (`--out=- | ssh` at a password prompt)
  // must not keep the job attached, which would keep it from being forgotten or retired.
  client->reset();
  if (absl::Status s = WriteWhole(*out, *state); !s.ok()) {
    // `--out=- | head -c1`: as any other write to a pipe whose reader went.
    if (out->kind == Output::kDescriptor && out->fd == STDOUT_FILENO && StdoutReaderGone(0)) {
      return 128 + SIGPIPE;
    }
    return Fail(s);
  }
  const std::string job = absl::GetFlag(FLAGS_job);
  // To stdout, which holds the state: what was done goes to stderr.
  const bool to_stdout = out->kind == Output::kDescriptor && out->fd == STDOUT_FILENO;
  return Done(
      absl::StrCat(to_stdout ? "gstabctl: " : "", "exported ", state->size(), " bytes of job ", job,
                   "'s statistics", path == "-" ? "" : absl::StrCat(" to ", path)),
      {{"job", job}, {"bytes", static_cast<double>(state->size())}, {"out", path}},
      to_stdout ? stderr : stdout);
}

int Import() {
  const std::string path = absl::GetFlag(FLAGS_in);
  if (path.empty() || absl::GetFlag(FLAGS_job).empty()) {
    return Usage("import needs --job=NAME and --in=FILE");
  }
  absl::StatusOr<std::string> bytes = ReadWhole(path, kMaxMessageBytes);
  if (!bytes.ok()) return Fail(bytes.status());
  auto client = ConnectToJob();
  if (!client.ok()) return Fail(client.status());
  v1::ImportStateResponse imported;
  if (absl::Status s = (*client)->ImportState(*bytes, &imported, absl::GetFlag(FLAGS_keep_config));
      !s.ok()) {
    return Fail(s);
  }
  const std::string job = absl::GetFlag(FLAGS_job);
  // Taken, but said: groups no worker registers keep their statistics for nothing, and the
  // workers' own groups start afresh (another group naming than the saved run's, most likely).
  if (imported.unregistered_groups() > 0) {
    std::fprintf(stderr,
                 "gstabctl: %u of the state's groups are not registered by any worker of job %s "
                 "on this node (first '%s'): their statistics go unused until a registration "
                 "names them; resume with the group names the saved run had\n",
                 imported.unregistered_groups(), job.c_str(),
                 imported.first_unregistered().c_str());
  }
  return Done(
      absl::StrCat("imported ", path, " into job ", job, " (", imported.groups(), " groups)"),
      {{"job", job},
       {"in", path},
       {"groups", static_cast<double>(imported.groups())},
       {"unregistered_groups", static_cast<double>(imported.unregistered_groups())}});
}

// Drops what gstabd holds of a job no worker uses: its next attach starts it afresh.
int Forget() {
  const std::string job = absl::GetFlag(FLAGS_job);
  if (job.empty()) return Usage("forget needs --job=NAME");
  auto client = Connect();
  if (!client.ok()) return Fail(client.status());
  // UNAVAILABLE while gstabd retires the job, or another call forgets it, just then;
  // FAILED_PRECONDITION while a call of the job is under way (an ended session's release).
  absl::StatusOr<v1::ForgetJobResponse> forgot;
  (void)TryAgainWhileBusy({absl::StatusCode::kUnavailable, absl::StatusCode::kFailedPrecondition},
                          [&] {
                            forgot = (*client)->ForgetJob(job);
                            return forgot.status();
                          });
  if (!forgot.ok()) return Fail(forgot.status());
  const v1::ForgetJobResponse& response = *forgot;
  return Done(
      absl::StrCat(
          "forgot job ", job, " (",
          response.held() && response.checkpoint() ? "held, and a checkpoint"
          : response.held()                        ? "held"
          : response.checkpoint()                  ? "a checkpoint"
                                                   : "nothing but set-aside files",
          response.checkpoint_file() ? "; its checkpoint file deleted" : "",
          response.set_aside_files_deleted() > 0
              ? absl::StrCat("; ", response.set_aside_files_deleted(), " set-aside file(s) deleted")
              : "",
          "): its next attach starts it afresh"),
      {{"job", job},
       {"held", response.held()},
       {"checkpoint", response.checkpoint()},
       {"checkpoint_file", response.checkpoint_file()},
       {"set_aside_files_deleted", static_cast<double>(response.set_aside_files_deleted())}});
}

int Rendezvous() {
  const std::string job = absl::GetFlag(FLAGS_job);
  const uint32_t nodes = absl::GetFlag(FLAGS_nodes);
  if (job.empty() || nodes == 0) return Usage("rendezvous needs --job=NAME and --nodes=N");
  auto client = Connect();
  if (!client.ok()) return Fail(client.status());
  absl::StatusOr<std::string> blob =
      (*client)->CreateRendezvous(job, nodes, absl::GetFlag(FLAGS_cuda));
  if (!blob.ok()) return Fail(blob.status());
  const std::string base64 = absl::Base64Escape(*blob);
  return Done(base64,
              {{"job", job}, {"nodes", static_cast<double>(nodes)}, {"rendezvous", base64}});
}

}  // namespace
}  // namespace gstab::ctl

namespace {

constexpr char kUsage[] =
    "[--socket=PATH|HOST:PORT] [--json] [--timeout_s=S] COMMAND\n\n"
    "Commands:\n"
    "  health\n"
    "  version\n"
    "  status [--job=J] [--all]\n"
    "  events [--job=J] [--recent=N] [--follow]\n"
    "  top [--job=J] [--interval_ms=MS] [--iterations=N]\n"
    "  config set --job=J KEY=VALUE...\n"
    "  config show --job=J\n"
    "  export --job=J --out=FILE|-\n"
    "  import --job=J --in=FILE|- [--keep_config]\n"
    "  forget --job=J\n"
    "  rendezvous --job=J --nodes=N [--cuda]";

// The flags each command takes, besides --socket, --json and --timeout_s.
const std::map<std::string, std::set<std::string>>& CommandFlags() {
  static const auto* flags = new std::map<std::string, std::set<std::string>>{
      {"health", {}},
      {"version", {}},
      {"status", {"job", "all"}},
      {"events", {"job", "recent", "follow"}},
      {"top", {"job", "interval_ms", "iterations"}},
      {"config", {"job"}},
      {"export", {"job", "out"}},
      {"import", {"job", "in", "keep_config"}},
      {"forget", {"job"}},
      {"rendezvous", {"job", "nodes", "cuda"}},
  };
  return *flags;
}

// The flags given: on the command line, and those a --flagfile or --fromenv set to other than
// their defaults (a flag file of an operator's, say), so that a command refuses these too.
std::set<std::string> GivenFlags(int argc, char** argv) {
  std::set<std::string> given = gstab::FlagsOnCommandLine(argc, argv);
  for (const auto& [command, flags] : CommandFlags()) {
    for (const std::string& name : flags) {
      const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
      if (flag != nullptr && flag->CurrentValue() != flag->DefaultValue()) given.insert(name);
    }
  }
  return given;
}

int Run(const std::vector<std::string>& args, const std::set<std::string>& given) {
  if (args.empty()) return gstab::ctl::Usage("no command");
  const std::string& cmd = args[0];
  const auto command = CommandFlags().find(cmd);
  if (command == CommandFlags().end()) return gstab::ctl::Usage("unknown command '" + cmd + "'");
  for (const std::string& flag : given) {
    if (flag == "socket" || flag == "json" || flag == "timeout_s") continue;
    if (command->second.count(flag) == 0) {
      return gstab::ctl::Usage(absl::StrCat(
          cmd, " takes no --", flag,
          command->second.empty()
              ? ""
              : absl::StrCat(" (its flags: --", absl::StrJoin(command->second, ", --"), ")")));
    }
  }
  // Given empty (--job=), or a name no job can have (from the command line or a --flagfile).
  if (const std::string job = absl::GetFlag(FLAGS_job);
      (given.count("job") == 1 || !job.empty()) && !gstab::IsJobName(job)) {
    return gstab::ctl::Usage(absl::StrCat(
        "--job: job names are 1 to 128 characters of [A-Za-z0-9._-], not '", job, "'"));
  }
  if (absl::GetFlag(FLAGS_timeout_s) <= 0) return gstab::ctl::Usage("--timeout_s must be > 0");
  if (const std::string socket = absl::GetFlag(FLAGS_socket); !socket.empty()) {
    if (absl::Status s = gstab::CheckAddress(socket); !s.ok()) {
      return gstab::ctl::Usage(absl::StrCat("--socket: ", s.message()));
    }
  }
  // Every wait of gstabctl's, and of the client library's calls, is --timeout_s when given on
  // the command line, else $GSTAB_CALL_TIMEOUT_S when set (as in workers' environments, which
  // operators inherit through `kubectl exec`), else --timeout_s's value (a --flagfile's too).
  const absl::StatusOr<std::optional<int>> from_environment = gstab::CallTimeoutFromEnvironment();
  if (!from_environment.ok() && given.count("timeout_s") == 0) {
    return gstab::ctl::Usage(std::string(from_environment.status().message()));
  }
  if (from_environment.ok() && from_environment->has_value() && given.count("timeout_s") == 0) {
    absl::SetFlag(&FLAGS_timeout_s, **from_environment);
  }
  setenv("GSTAB_CALL_TIMEOUT_S", std::to_string(absl::GetFlag(FLAGS_timeout_s)).c_str(), 1);
  if (cmd != "config" && args.size() > 1) {
    return gstab::ctl::Usage(
        absl::StrCat(cmd, " takes no argument but flags (--job=NAME, ...), not '", args[1], "'"));
  }
  if (cmd == "health") return gstab::ctl::Health();
  if (cmd == "version") return gstab::ctl::Version();
  if (cmd == "status") return gstab::ctl::Status();
  if (cmd == "events") return gstab::ctl::Events();
  if (cmd == "top") return gstab::ctl::Top();
  if (cmd == "export") return gstab::ctl::Export();
  if (cmd == "import") return gstab::ctl::Import();
  if (cmd == "rendezvous") return gstab::ctl::Rendezvous();
  if (cmd == "forget") return gstab::ctl::Forget();
  if (cmd == "config" && args.size() >= 2 && args[1] == "set") {
    return gstab::ctl::ConfigSet(std::vector<std::string>(args.begin() + 2, args.end()));
  }
  if (cmd == "config" && args.size() == 2 && args[1] == "show") return gstab::ctl::ConfigShow();
  if (cmd == "config" && args.size() > 2 && args[1] == "show") {
    return gstab::ctl::Usage(
        absl::StrCat("config show takes no argument but --job=NAME, not '", args[2], "'"));
  }
  if (cmd == "config") return gstab::ctl::Usage("config takes `set KEY=VALUE...` or `show`");
  return gstab::ctl::Usage("unknown command '" + cmd + "'");
}

}  // namespace

int main(int argc, char** argv) {
  gstab::OpenStandardDescriptors();
  gstab::ctl::HandleStopSignals();
  std::vector<char*> rest =
      gstab::ParseCommandLineOrExit(argc, argv, "gstabctl", kUsage, "tools/gstabctl.cc");
  int code = Run(std::vector<std::string>(rest.begin() + 1, rest.end()), GivenFlags(argc, argv));
  // What was printed must have reached stdout: `gstabctl --json status > snap.json` on a full
  // disk fails rather than leave an empty file behind an exit status of 0.
  if (code == 0 && !gstab::ctl::StdoutWritten()) code = gstab::ctl::StdoutFailed();
  return code;
}
