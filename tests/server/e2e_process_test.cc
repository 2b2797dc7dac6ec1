// gstabd as a system service runs it: the signals it ignores rather than die of without a
// checkpoint, the folders it creates (modes that do not follow the umask it was started with),
// a --socket path that is not a socket or that another gstabd is taking, a socket removed while
// it serves, and command lines it would misread.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/worker.h"

namespace gstab {
namespace {

using testing::DaemonProcess;
using testing::JobOptions;
using testing::Subprocess;
using testing::TempDir;
using testing::TestWorker;

// gstabd with `flags` (after the defaults below, so they win), expected to refuse to start:
// its exit code and output.
std::pair<int, std::string> StartRefused(const TempDir& dir,
                                         const std::vector<std::string>& flags) {
  std::vector<std::string> argv = {
      testing::BinaryPath("server/gstabd"), "--socket=" + dir.path() + "/refused.sock",
      "--state_dir=" + dir.path() + "/refused-state", "--metrics_port=-1", "--backend=cpu"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  return testing::RunBounded(argv);
}

mode_t ModeOf(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? st.st_mode & 07777 : 0;
}

TEST(E2eProcessTest, HangUpAndUserSignalsAreIgnoredAndTheStopStillCheckpoints) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto worker = TestWorker::Create(daemon->socket(), JobOptions("hung-up"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  (*worker)->Fill(1, 1);
  ASSERT_TRUE((*worker)->client().Step(1).ok());
  for (int sig : {SIGHUP, SIGUSR1, SIGUSR2, SIGPIPE}) daemon->process().Signal(sig);
  absl::SleepFor(absl::Milliseconds(300));
  (*worker)->Fill(1, 1);
  EXPECT_TRUE((*worker)->client().Step(2).ok()) << daemon->Log();
  worker->reset();
  absl::StatusOr<int> code = daemon->Stop();
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0) << daemon->Log();
  EXPECT_TRUE(std::filesystem::exists(dir.path() + "/state/hung-up.jobstate")) << daemon->Log();
  EXPECT_NE(daemon->Log().find("ignored Hangup"), std::string::npos) << daemon->Log();
}

// A --socket naming a file (a typo) must not delete it; a folder is refused too.
TEST(E2eProcessTest, ASocketPathThatIsAFileOrFolderIsRefusedAndLeftAlone) {
  TempDir dir;
  const std::string file = dir.path() + "/config.yaml";
  std::ofstream(file) << "precious";
  auto [code, out] = StartRefused(dir, {"--socket=" + file});
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("is a file, not a socket"), std::string::npos) << out;
  std::ifstream kept(file);
  std::stringstream text;
  text << kept.rdbuf();
  EXPECT_EQ(text.str(), "precious");
  std::filesystem::create_directory(dir.path() + "/folder");
  auto [fcode, fout] = StartRefused(dir, {"--socket=" + dir.path() + "/folder"});
  EXPECT_EQ(fcode, 1) << fout;
  EXPECT_NE(fout.find("is a folder, not a socket"), std::string::npos) << fout;
  EXPECT_TRUE(std::filesystem::is_directory(dir.path() + "/folder"));
  std::filesystem::create_symlink(file, dir.path() + "/link.sock");
  auto [lcode, lout] = StartRefused(dir, {"--socket=" + dir.path() + "/link.sock"});
  EXPECT_EQ(lcode, 1) << lout;
  EXPECT_NE(lout.find("is a symbolic link, not a socket"), std::string::npos) << lout;
  EXPECT_TRUE(std::filesystem::is_symlink(dir.path() + "/link.sock"));
  // A live socket of another kind (a datagram one, as journald's) is not a leftover to take.
  const std::string datagram = dir.path() + "/journal.sock";
  const int live = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, datagram.c_str(), datagram.size() + 1);
  ASSERT_EQ(bind(live, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << strerror(errno);
  struct stat before;
  ASSERT_EQ(stat(datagram.c_str(), &before), 0);
  auto [dcode, dout] = StartRefused(dir, {"--socket=" + datagram});
  EXPECT_EQ(dcode, 1) << dout;
  EXPECT_NE(dout.find("cannot tell for a leftover (connecting to it: Protocol wrong type"),
            std::string::npos)
      << dout;
  struct stat after;
  EXPECT_EQ(stat(datagram.c_str(), &after), 0);
  EXPECT_EQ(after.st_ino, before.st_ino);
  close(live);
  // A folder other users may write, without the sticky bit: they could swap the socket for a
  // link whose target gstabd would chmod. With the sticky bit (as /tmp) it is taken.
  const std::string open = dir.path() + "/open";
  std::filesystem::create_directory(open);
  ASSERT_EQ(chmod(open.c_str(), 0777), 0);
  auto [ocode, oout] = StartRefused(dir, {"--socket=" + open + "/gstabd.sock"});
  EXPECT_EQ(ocode, 1) << oout;
  EXPECT_NE(oout.find("writable by other users (mode 0777) and not sticky"), std::string::npos)
      << oout;
  ASSERT_EQ(chmod(open.c_str(), 0775), 0);  // its group's: the training users', often
  auto [gcode, gout] = StartRefused(dir, {"--socket=" + open + "/gstabd.sock"});
  EXPECT_EQ(gcode, 1) << gout;
  EXPECT_NE(gout.find("(mode 0775) and not sticky"), std::string::npos) << gout;
  if (geteuid() == 0) {  // another user's folder (not root's), whatever its mode: its owner
    const std::string theirs = dir.path() + "/theirs";  // may rename anything in it
    std::filesystem::create_directory(theirs);
    ASSERT_EQ(chmod(theirs.c_str(), 01755), 0);
    ASSERT_EQ(chown(theirs.c_str(), 4242, 4242), 0);
    auto [tcode, tout] = StartRefused(dir, {"--socket=" + theirs + "/gstabd.sock"});
    EXPECT_EQ(tcode, 1) << tout;
    EXPECT_NE(tout.find("its folder belongs to another user (uid 4242)"), std::string::npos)
        << tout;
  }
  ASSERT_EQ(chmod(open.c_str(), 01777), 0);
  absl::StatusOr<DaemonProcess> sticky = DaemonProcess::Start(open);  // its socket there
  ASSERT_TRUE(sticky.ok()) << sticky.status();
  EXPECT_EQ(sticky->Stop().value_or(-1), 0) << sticky->Log();
  // The probes' socket is not checked: under Kubernetes its folder is an emptyDir of gstabd's
  // own pod, 0777 where the kubelet makes it so.
  ASSERT_EQ(chmod(open.c_str(), 0777), 0);
  absl::StatusOr<DaemonProcess> probed =
      DaemonProcess::Start(dir.path(), {"--health_socket=" + open + "/probe.sock"});
  ASSERT_TRUE(probed.ok()) << probed.status();
  EXPECT_EQ(probed->Stop().value_or(-1), 0) << probed->Log();
}

// Two gstabds started at once on one --socket (with different --state_dir) would both find no
// live socket there, and the later one would remove the earlier one's as a leftover: the one
// that finds <socket>.lock held (here by the test) is refused, and leaves the path alone. A lock
// file a killed gstabd left behind does not stop the next; a stop removes it.
TEST(E2eProcessTest, ASocketAnotherGstabdIsTakingIsLeftToIt) {
  TempDir dir;
  const std::string socket_path = dir.path() + "/gstabd.sock";
  const int held = open((socket_path + ".lock").c_str(), O_RDONLY | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(held, 0) << strerror(errno);
  ASSERT_EQ(flock(held, LOCK_EX), 0) << strerror(errno);
  auto [code, out] = StartRefused(dir, {"--socket=" + socket_path});
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("is starting or serves on '" + socket_path + "'"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(socket_path));
  EXPECT_TRUE(std::filesystem::exists(socket_path + ".lock"));
  close(held);  // as a killed gstabd would: its file stays, unlocked
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto worker = TestWorker::Create(daemon->socket(), JobOptions("after-a-left-lock"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  (*worker)->Fill(1, 1);
  EXPECT_TRUE((*worker)->client().Step(1).ok());
  worker->reset();
  absl::StatusOr<int> stopped = daemon->Stop();
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_EQ(*stopped, 0) << daemon->Log();
  EXPECT_FALSE(std::filesystem::exists(socket_path)) << daemon->Log();
  EXPECT_FALSE(std::filesystem::exists(socket_path + ".lock")) << daemon->Log();
}

// A socket removed while gstabd serves (an operator's rm, a root worker's) would leave gstabd
// healthy to its probes, which use another socket, while no worker could reach it: gstabd makes
// it again within a second or two, and its lock file, removed too, is taken anew, so a second
// gstabd is still refused the path. Another socket that takes the path is logged as an error.
TEST(E2eProcessTest, ASocketRemovedWhileServingIsMadeAgain) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(dir.path());
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  const std::string socket_path = daemon->socket();
  ASSERT_TRUE(std::filesystem::remove(socket_path + ".lock"));  // first: taken again alone
  ASSERT_TRUE(std::filesystem::remove(socket_path));
  EXPECT_TRUE(daemon->WaitForLog("was removed while gstabd served on it")) << daemon->Log();
  EXPECT_TRUE(std::filesystem::exists(socket_path + ".lock"));
  auto worker = TestWorker::Create(socket_path, JobOptions("made-again"));
  ASSERT_TRUE(worker.ok()) << worker.status();
  (*worker)->Fill(1, 1);
  EXPECT_TRUE((*worker)->client().Step(1).ok());
  auto [code, out] = StartRefused(dir, {"--socket=" + socket_path});
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("is starting or serves on '" + socket_path + "'"), std::string::npos) << out;
  worker->reset();
  // Another socket put in its place (at once, by a rename) is said, and left to its owner.
  const std::string other = dir.path() + "/other.sock";
  const int listening = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, other.c_str(), other.size() + 1);
  ASSERT_EQ(bind(listening, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << strerror(errno);
  std::filesystem::rename(other, socket_path);
  EXPECT_TRUE(daemon->WaitForLog("another file has taken its path")) << daemon->Log();
  absl::StatusOr<int> stopped = daemon->Stop();
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_EQ(*stopped, 0) << daemon->Log();
  EXPECT_TRUE(std::filesystem::exists(socket_path)) << "another's socket removed";
  EXPECT_FALSE(std::filesystem::exists(socket_path + ".lock")) << daemon->Log();
  close(listening);
}

// `--jobs_by_uid false` would leave the flag true and drop "false" unseen; TLS files without
// their port would be ignored; 100,000 kernel threads would abort gstabd seconds later; a log
// queue of 100 bytes would hold no line.
// A flag abseil cannot read is a bad command line too (abseil's own parser exits 1). Each
// exits 2, saying what was wrong.
TEST(E2eProcessTest, CommandLinesThatWouldBeMisreadAreRefused) {
  TempDir dir;
  std::filesystem::create_directory_symlink(dir.path(), dir.path() + "/via-link");
  const std::vector<std::pair<std::vector<std::string>, std::string>> refused = {
      {{"--jobs_by_uid", "false"}, "unexpected argument 'false'"},
      {{"--tls_cert=/nowhere.pem"}, "--listen is not set"},
      {{"--cpu_threads=100000"}, "--cpu_threads takes a count up to 1024"},
      {{"--log_queue_bytes=100"}, "--log_queue_bytes must be from 4096"},
      {{"--max_job=4"}, "unknown flag --max_job"},
      {{"--lease_ms=soon"}, "--lease_ms: 'soon' is not a value it takes"},
      // Milliseconds given as seconds: every session would expire, every step time out, at once.
      {{"--lease_ms=30"}, "--lease_ms=30 is in milliseconds and must be at least 100"},
      {{"--step_timeout_ms=60"}, "did you mean --step_timeout_ms=60000"},
      // Settings of something turned off, which would be ignored.
      {{"--metrics_address=127.0.0.1"}, "--metrics_port=-1 serves none"},
      {{"--socket=", "--allow_uids=0"}, "--socket= turns it off"},
      {{"--peer_listen=127.0.0.1:0", "--peer_tls_name=gstab-peer"},
       "no --peer_tls_ca, --peer_tls_cert and --peer_tls_key are given"},
      // The socket under another spelling of its path.
      {{"--health_socket=" + dir.path() + "//refused.sock"}, "must be another path than --socket"},
      {{"--health_socket=" + dir.path() + "/via-link/refused.sock"}, "must be another path"},
      // A socket in the state folder, which gstabd makes its own user's alone.
      {{"--state_dir=" + dir.path() + "/via-link"}, "is in --state_dir="},
      {{"--socket=" + dir.path() + "/refused-state/sub/gstabd.sock"}, "is in --state_dir="},
      {{"--socket=refused.sock", "--state_dir=."}, "is in --state_dir=."},
      // A path no gRPC client could dial (read as a URI).
      {{"--socket=" + dir.path() + "/gstabd%20.sock"}, "has '%', which gRPC's clients read"},
  };
  for (const auto& [flags, says] : refused) {
    auto [code, out] = StartRefused(dir, flags);
    EXPECT_EQ(code, 2) << flags[0] << ": " << out;
    EXPECT_NE(out.find(says), std::string::npos) << flags[0] << ": " << out;
  }
}

// Started with stderr closed (a launcher's `2>&-`), gstabd puts /dev/null there first: the next
// file it opened (its state folder's lock, a socket) took descriptor 2, and its log lines were
// written into that.
TEST(E2eProcessTest, AClosedStderrIsNotTakenByTheNextFileOpened) {
  TempDir dir;
  const std::string socket = dir.path() + "/run/gstabd.sock";
  std::filesystem::create_directory(dir.path() + "/run");
  std::filesystem::permissions(dir.path() + "/run", std::filesystem::perms::owner_all);
  const std::string script = absl::StrCat(
      testing::BinaryPath("server/gstabd"), " --socket=", socket, " --state_dir=", dir.path(),
      "/state --metrics_port=-1 2>&- & pid=$!; for i in $(seq 100); do [ -S ", socket,
      " ] && break; sleep 0.1; done; readlink /proc/$pid/fd/2; kill $pid; wait $pid; echo exit $?");
  auto [code, out] = testing::RunShell(script);
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("/dev/null"), std::string::npos) << out;
  EXPECT_NE(out.find("exit 0"), std::string::npos) << out;
}

// --help answers with gstabd's own flags, and succeeds (abseil's parser exits 1).
TEST(E2eProcessTest, HelpListsGstabdsFlagsAndSucceeds) {
  auto [code, out] = testing::RunShell(testing::BinaryPath("server/gstabd") + " --help");
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("Usage: gstabd"), std::string::npos) << out;
  EXPECT_NE(out.find("  --state_dir\n"), std::string::npos) << out;
  EXPECT_EQ(out.find("--flagfile"), std::string::npos) << out;  // abseil's: --helpfull
  auto [fcode, full] = testing::RunShell(testing::BinaryPath("server/gstabd") + " --helpfull");
  EXPECT_EQ(fcode, 0) << full;
  EXPECT_NE(full.find("  --flagfile\n"), std::string::npos) << full;
  // abseil's own flags keep working: a deployment script's check of its flags, an unknown flag
  // let through by --undefok wherever it stands.
  const std::string gstabd = testing::BinaryPath("server/gstabd");
  EXPECT_EQ(testing::RunShell(gstabd + " --lease_ms 5 --only_check_args").first, 0);
  EXPECT_EQ(testing::RunShell(gstabd + " --newflag=1 --undefok=newflag --only_check_args").first,
            0);
  EXPECT_EQ(testing::RunShell(gstabd + " --undefok=newflag --newflag=1 --only_check_args").first,
            0);
  EXPECT_EQ(testing::RunShell(gstabd + " --lease_ms=x --only_check_args").first, 2);
  EXPECT_EQ(testing::RunShell(gstabd + " --undefok=newflag --help").first, 0);
  auto [vcode, version] = testing::RunShell(gstabd + " --version");
  EXPECT_EQ(vcode, 0);
  EXPECT_EQ(version.rfind("gstabd 0.", 0), 0u) << version;
}

// Under umask 000 the folders gstabd makes would be anyone's to change (a checkpoint deleted
// by any user); under 077 the socket's folder would shut out the group it is shared with.
TEST(E2eProcessTest, FoldersGstabdMakesHaveTheirModesWhateverTheUmask) {
  for (const char* umask : {"000", "077"}) {
    TempDir dir;
    // The two share a folder gstabd makes too: it must stay open to the socket's users.
    const std::string socket = dir.path() + "/srv/run/gstabd.sock";
    const std::string state = dir.path() + "/srv/state";
    absl::StatusOr<Subprocess> p =
        Subprocess::Start({"/bin/sh", "-c", std::string("umask ") + umask + "; exec \"$0\" \"$@\"",
                           testing::BinaryPath("server/gstabd"), "--socket=" + socket,
                           "--state_dir=" + state, "--metrics_port=-1", "--backend=cpu"},
                          dir.path() + "/gstabd.log");
    ASSERT_TRUE(p.ok()) << p.status();
    for (int i = 0; i < 1000 && !std::filesystem::exists(socket); ++i) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    ASSERT_TRUE(std::filesystem::exists(socket)) << umask;
    EXPECT_EQ(ModeOf(dir.path() + "/srv"), 0755u) << umask;
    EXPECT_EQ(ModeOf(dir.path() + "/srv/run"), 0755u) << umask;
    EXPECT_EQ(ModeOf(socket), 0660u) << umask;
    EXPECT_EQ(ModeOf(state), 0700u) << umask;
    p->Signal(SIGTERM);
    EXPECT_EQ(p->Wait(absl::Seconds(20)).value_or(-1), 0) << umask;
  }
}

// A reader that stops reading gstabd's stderr (a stalled container runtime, a pipe nobody
// drains) must not stop gstabd: attaches go on, lines beyond the queue are dropped and counted,
// the count is logged once stderr takes lines again, and SIGTERM still stops it.
TEST(E2eProcessTest, AStderrNobodyReadsHoldsUpNoCallAndNoStop) {
  TempDir dir;
  setenv("GSTAB_CALL_TIMEOUT_S", "10", 1);  // a call held up by a log line fails, not hangs
  absl::Cleanup restore = [] { unsetenv("GSTAB_CALL_TIMEOUT_S"); };  // for this test alone
  // The pipe holds 64 KiB and the queue 16 KiB: each attach logs a line of about 100 bytes.
  auto daemon = Subprocess::Start({testing::BinaryPath("server/gstabd"),
                                   "--socket=" + dir.path() + "/gstabd.sock",
                                   "--state_dir=" + dir.path() + "/state", "--metrics_port=-1",
                                   "--backend=cpu", "--log_queue_bytes=16384"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  absl::StatusOr<std::string> first = daemon->ReadLine(absl::Seconds(10));
  ASSERT_TRUE(first.ok()) << first.status();  // started (and the pipe left unread from now on)
  auto client = Client::Connect(dir.path() + "/gstabd.sock", absl::Seconds(10));
  ASSERT_TRUE(client.ok()) << client.status();
  const absl::Time start = absl::Now();
  for (int i = 0; i < 2000; ++i) {
    absl::Status s = (*client)->Attach(JobOptions(absl::StrCat("unread-log-", i % 8)));
    ASSERT_TRUE(s.ok()) << "attach " << i << " after " << absl::Now() - start << ": " << s;
  }
  ASSERT_TRUE((*client)->Detach().ok());
  // Reading again: the queued lines come out, then the count of those dropped.
  bool told = false;
  while (!told) {  // no read past the line looked for: none may follow until the next log line
    absl::StatusOr<std::string> line = daemon->ReadLine(absl::Seconds(10));
    ASSERT_TRUE(line.ok()) << line.status();
    told = absl::StrContains(*line, "log lines dropped: stderr was not read");
  }
  daemon->Signal(SIGTERM);
  const std::string rest = daemon->ReadAll();
  absl::StatusOr<int> code = daemon->Wait(absl::Seconds(10));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0) << rest;
  EXPECT_TRUE(absl::StrContains(rest, "received Terminated")) << rest;
}

// A state folder whose disk hangs (a network file system gone away: strace holds every rename,
// renameat included, the last step of each checkpoint's save, 30 s) holds up its checkpoints alone:
// a killed worker's session still ends at its lease.
TEST(E2eProcessTest, AHungStateFolderHoldsUpNoLease) {
  TempDir dir;
  auto daemon = DaemonProcess::Start(
      dir.path(), {"--lease_ms=1000", "--checkpoint_interval_s=1"},
      {"/usr/bin/strace", "-f", "-q", "-o", "/dev/null", "-e", "trace=rename,renameat,renameat2",
       "-e", "inject=rename,renameat,renameat2:delay_enter=30000000"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  // gstabd itself, under strace: killed at the end (its last checkpoint would hang too).
  const pid_t gstabd = testing::TracedChild(daemon->process().pid());
  ASSERT_NE(gstabd, 0) << "gstabd under strace";
  absl::Cleanup kill_gstabd = [gstabd] { kill(gstabd, SIGKILL); };
  absl::StatusOr<Subprocess> worker = Subprocess::Start(
      {testing::BinaryPath("examples/mlp_trainer"), "--socket=" + daemon->socket(),
       "--job=hung-disk", "--steps=1000000", "--print_every=1", "--spike_steps="});
  ASSERT_TRUE(worker.ok()) << worker.status();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(worker->ReadLine(absl::Seconds(20)).ok());
  // A checkpoint of the job has begun (every second), and hangs in its rename: its temporary
  // file is there, the checkpoint is not.
  absl::SleepFor(absl::Seconds(2));
  std::string listing;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path() + "/state")) {
    listing += entry.path().filename().string() + " ";
  }
  ASSERT_TRUE(absl::StrContains(listing, "hung-disk.jobstate.jobstate:tmp:"))  // (as saves name it)
      << "no checkpoint's save is held in its rename: " << listing;
  ASSERT_FALSE(std::filesystem::exists(dir.path() + "/state/hung-disk.jobstate"));
  worker->Signal(SIGKILL);
  ASSERT_TRUE(worker->Wait(absl::Seconds(10)).ok());
  EXPECT_TRUE(
      daemon->WaitForLog("session of job 'hung-disk' local rank 0 expired", absl::Seconds(8)))
      << "the lease waited for the hung checkpoint: " << daemon->Log();
}

// Whether a thread of process `pid` is in system call `nr` (/proc's view: a traced thread held at
// the call's entry counts), within `timeout`.
bool InSyscall(pid_t pid, long nr, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  do {
    std::error_code ec;
    for (const auto& task :
         std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/task"), ec)) {
      std::ifstream syscall(task.path() / "syscall");
      long number = -2;
      if (syscall >> number && number == nr) return true;
    }
    absl::SleepFor(absl::Milliseconds(20));
  } while (absl::Now() < deadline);
  return false;
}

// An operator's forget whose checkpoint file sits on a hung disk (strace holds gstabd's unlink of
// that file 5 s: every unlinkat through the state folder's descriptor, as checkpoints are
// deleted) holds up that forget alone: another job's steps go on meanwhile.
TEST(E2eProcessTest, AForgetOnAHungDiskHoldsUpNoStep) {
  TempDir dir;
  const std::string file = dir.path() + "/state/forgotten.jobstate";
  auto daemon = DaemonProcess::Start(
      dir.path(), {"--checkpoint_interval_s=1"},
      {"/usr/bin/strace", "-f", "-q", "-o", "/dev/null", "-P", dir.path() + "/state", "-e",
       "trace=unlinkat", "-e", "inject=unlinkat:delay_enter=5000000"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  const pid_t gstabd = testing::TracedChild(daemon->process().pid());
  ASSERT_NE(gstabd, 0) << "gstabd under strace";
  absl::Cleanup kill_gstabd = [gstabd] { kill(gstabd, SIGKILL); };
  {
    auto done = TestWorker::Create(daemon->socket(), JobOptions("forgotten"));
    ASSERT_TRUE(done.ok()) << done.status();
    (*done)->Fill(1, 1);
    ASSERT_TRUE((*done)->client().Step(1).ok());
  }  // detached
  auto busy = TestWorker::Create(daemon->socket(), JobOptions("busy"));
  ASSERT_TRUE(busy.ok()) << busy.status();
  for (int i = 0; i < 100 && !std::filesystem::exists(file); ++i) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(std::filesystem::exists(file)) << "no checkpoint of the job to forget";
  absl::StatusOr<Subprocess> forget =
      Subprocess::Start({testing::BinaryPath("tools/gstabctl"), "--socket=" + daemon->socket(),
                         "forget", "--job=forgotten"});
  ASSERT_TRUE(forget.ok()) << forget.status();
  ASSERT_TRUE(InSyscall(gstabd, SYS_unlinkat, absl::Seconds(10)))
      << "the forget's unlink is not held";
  for (uint64_t step = 1; step <= 5; ++step) {
    (*busy)->Fill(step, 2);
    ASSERT_TRUE((*busy)->client().Step(step).ok());
  }
  // The steps are done while the unlink still waits (the file is there until it runs): they
  // did not wait for the forget.
  EXPECT_TRUE(std::filesystem::exists(file)) << "the steps waited for the forget";
  // A second forget meanwhile (gstabd answers "being forgotten just now: try again") tries
  // again until the first is done, and then finds the job gone.
  absl::StatusOr<Subprocess> again =
      Subprocess::Start({testing::BinaryPath("tools/gstabctl"), "--socket=" + daemon->socket(),
                         "--timeout_s=30", "forget", "--job=forgotten"});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(forget->Wait(absl::Seconds(15)).value_or(-1), 0) << forget->ReadAll();
  EXPECT_FALSE(std::filesystem::exists(file));
  const std::string said = again->ReadAll();
  EXPECT_EQ(again->Wait(absl::Seconds(15)).value_or(-1), 1) << said;
  EXPECT_TRUE(absl::StrContains(said, "gstabd holds no job 'forgotten', no checkpoint of it"))
      << said;
}

}  // namespace
}  // namespace gstab
